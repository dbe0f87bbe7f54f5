"""`fastcodellama serve` (and `python -m api`): the OpenAI-compatible completion server."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from api.config import ServerConfig
from fastcodellama.cli import checks
from fastcodellama.cli.options import add_engine_args, add_spec_args, engine_config, spec_config

if TYPE_CHECKING:  # the server and the engine load when it runs, not to parse its options
    from engine import EngineConfig
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
    net.add_argument("--api-key", action="append", default=None, metavar="KEY",
                     help="require 'Authorization: Bearer KEY' (default: $FASTCODELLAMA_API_KEY, else none); "
                          "repeat to accept several keys, each then counting as its own client for fair sharing")
    net.add_argument("--max-queue", type=int, default=512,
                     help="sequences allowed to wait beyond --max-num-seqs (a request counts n); then 429")
    net.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request (0: no limit)")
    net.add_argument("--shutdown-grace", type=float, default=30.0,
                     help="seconds in-flight requests get to finish after SIGTERM")
    net.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body")
    net.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                     help="allow this browser origin (repeatable; '*' for any); default: no CORS")
    conn = parser.add_argument_group("connections and fair use")
    d = ServerConfig(served_model_names=("x",))
    conn.add_argument("--max-connections", type=int, default=d.max_connections,
                      help="open connections at most (kept under the open-file limit); past it the oldest idle "
                           "one is closed, else the new one")
    conn.add_argument("--max-connections-per-client", type=int, default=d.max_connections_per_client,
                      help="open connections from one address at most")
    conn.add_argument("--header-timeout", type=float, default=d.header_timeout,
                      help="seconds a new connection gets to send its first request's headers")
    conn.add_argument("--keepalive-timeout", type=float, default=d.keepalive_timeout,
                      help="seconds an idle keep-alive connection stays open")
    conn.add_argument("--body-timeout", type=float, default=d.body_timeout,
                      help="seconds a request body may take to arrive (then 408)")
    conn.add_argument("--max-request-tokens", type=int, default=d.max_request_tokens,
                      help="tokens one request may ask for: prompts x n x max_tokens (above: 400)")
    conn.add_argument("--client-share", type=float, default=d.client_share,
                      help="share of the server's sequences (--max-num-seqs + --max-queue) one client may hold; "
                           "a client past it gets 429 while others still get in")
    conn.add_argument("--max-client-labels", type=int, default=d.max_client_labels,
                      help="clients named in /metrics; the rest count as 'other'")
    conn.add_argument("--stream-interval", type=int, default=d.stream_interval, metavar="TOKENS",
                      help="a streamed answer's events carry at least this many new tokens (its first and "
                           "last at once): fewer socket writes with many streams")
    net.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    net.add_argument("--no-access-log", action="store_true", help="do not log each request")
    add_engine_args(parser, graph_capture="start-up")  # no request waits on a capture
    add_spec_args(parser)


def configs(args: argparse.Namespace) -> tuple[EngineConfig, ServerConfig, SpecConfig | None]:
    engine = engine_config(args)
    engine.torch_device()  # a GPU asked for where torch sees none: refused before the server starts
    names = tuple(args.served_model_name or (os.path.basename(os.path.normpath(args.model)),))
    keys = tuple(args.api_key or filter(None, [os.environ.get("FASTCODELLAMA_API_KEY")]))
    server = ServerConfig(
        served_model_names=names, host=args.host, port=args.port, api_key=keys[0] if keys else None,
        extra_api_keys=keys[1:], max_queue=args.max_queue, request_timeout=args.request_timeout or None,
        shutdown_grace=args.shutdown_grace, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        cors_origins=tuple(args.cors_origin), max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client, header_timeout=args.header_timeout,
        keepalive_timeout=args.keepalive_timeout, body_timeout=args.body_timeout,
        max_request_tokens=args.max_request_tokens, client_share=args.client_share,
        max_client_labels=args.max_client_labels, stream_interval=args.stream_interval)
    return engine, server, spec_config(args)


def run(args: argparse.Namespace) -> int:
    try:
        checks.model_folder(args.model)
    except checks.CliError as e:
        print(f"fastcodellama serve: {e}", file=sys.stderr)
        return 2
    from api.logs import limit_repeats
    from api.server import run_server

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limit_repeats(logging.getLogger())  # a flood of one error must not fill the disk
    try:
        engine, server, spec = configs(args)
    except ValueError as e:
        print(f"fastcodellama serve: {e}", file=sys.stderr)
        return 2
    try:
        checks.model_architecture(engine.model)  # a GPT-2 folder, say: one line, before the server starts
    except checks.CliError as e:
        print(f"fastcodellama serve: {e}", file=sys.stderr)
        return 2
    try:
        return run_server(engine, server, spec, access_log=not args.no_access_log)
    except OSError as e:  # the port is taken, the address is not local, ...
        print(f"fastcodellama serve: {e}", file=sys.stderr)
        return 1
