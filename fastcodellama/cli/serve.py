"""`fastcodellama serve` (and `python -m api`): the OpenAI-compatible completion server."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from api.config import ServerConfig
from api.server import run_server
from engine import EngineConfig
from fastcodellama.cli.options import add_engine_args, add_spec_args, engine_config, spec_config
from fastcodellama.drafting import SpecConfig


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API",
                                   description=__doc__)
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                        help="name clients use (default: the model folder's name); further names are "
                             "aliases, e.g. the engine names of Copilot clients")
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    net.add_argument("--api-key", default=os.environ.get("FASTCODELLAMA_API_KEY"),
                     help="require 'Authorization: Bearer KEY' (default: $FASTCODELLAMA_API_KEY, else none)")
    net.add_argument("--max-queue", type=int, default=512,
                     help="sequences allowed to wait beyond --max-num-seqs (a request counts n); then 429")
    net.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request (0: no limit)")
    net.add_argument("--shutdown-grace", type=float, default=30.0,
                     help="seconds in-flight requests get to finish after SIGTERM")
    net.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body")
    net.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                     help="allow this browser origin (repeatable; '*' for any); default: no CORS")
    net.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    net.add_argument("--no-access-log", action="store_true", help="do not log each request")
    add_engine_args(parser)
    add_spec_args(parser)


def configs(args: argparse.Namespace) -> tuple[EngineConfig, ServerConfig, SpecConfig | None]:
    engine = engine_config(args)
    names = tuple(args.served_model_name or (os.path.basename(os.path.normpath(args.model)),))
    server = ServerConfig(
        served_model_names=names, host=args.host, port=args.port, api_key=args.api_key or None,
        max_queue=args.max_queue, request_timeout=args.request_timeout or None, shutdown_grace=args.shutdown_grace,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024), cors_origins=tuple(args.cors_origin))
    return engine, server, spec_config(args)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine, server, spec = configs(args)
    except ValueError as e:
        print(f"fastcodellama serve: {e}", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(engine.model, "config.json")):
        print(f"fastcodellama serve: no model in {engine.model!r} (config.json missing); "
              f"give --model DIR", file=sys.stderr)
        return 2
    try:
        return run_server(engine, server, spec, access_log=not args.no_access_log)
    except OSError as e:  # the port is taken, the address is not local, ...
        print(f"fastcodellama serve: {e}", file=sys.stderr)
        return 1
