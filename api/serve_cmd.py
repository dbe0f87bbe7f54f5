"""`fastcodellama serve` (and `python -m api`): the OpenAI-compatible completion server."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import TYPE_CHECKING

from engine import DEFAULT_MODEL, EngineConfig

if TYPE_CHECKING:
    from api.config import ServerConfig

_ENGINE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EngineConfig)}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API",
                                   description=__doc__)
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _ENGINE_DEFAULTS
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model folder (default: the embedded model)")
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
    eng = parser.add_argument_group("engine")
    eng.add_argument("--max-num-seqs", type=int, default=d["max_num_seqs"])
    eng.add_argument("--max-num-batched-tokens", type=int, default=d["max_num_batched_tokens"])
    eng.add_argument("--kv-cache-memory-gb", type=float, default=d["kv_cache_memory_gb"])
    eng.add_argument("--num-kv-blocks", type=int, default=d["num_kv_blocks"], help="overrides --kv-cache-memory-gb")
    eng.add_argument("--block-size", type=int, default=d["block_size"])
    eng.add_argument("--dtype", default=d["dtype"], choices=["auto", "float32", "float16", "bfloat16"])
    eng.add_argument("--device", default=d["device"], help="auto, cpu, cuda, cuda:1, ...")
    eng.add_argument("--max-model-len", type=int, default=d["max_model_len"])
    eng.add_argument("--no-speculate", action="store_true", help="no copy-draft speculation")


def configs(args: argparse.Namespace) -> tuple[EngineConfig, "ServerConfig"]:
    from api.config import ServerConfig

    engine = EngineConfig(
        model=args.model, dtype=args.dtype, device=args.device, block_size=args.block_size,
        num_kv_blocks=args.num_kv_blocks, kv_cache_memory_gb=args.kv_cache_memory_gb,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len)
    names = tuple(args.served_model_name or (os.path.basename(os.path.normpath(args.model)),))
    server = ServerConfig(
        served_model_names=names, host=args.host, port=args.port, api_key=args.api_key or None,
        max_queue=args.max_queue, max_running=args.max_num_seqs,
        request_timeout=args.request_timeout or None, shutdown_grace=args.shutdown_grace,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024), cors_origins=tuple(args.cors_origin))
    return engine, server


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine_config, server_config = configs(args)
    except ValueError as e:
        print(f"fastcodellama serve: {e}", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(engine_config.model, "config.json")):
        print(f"fastcodellama serve: no model in {engine_config.model!r} (config.json missing); "
              f"give --model DIR", file=sys.stderr)
        return 2
    from api.server import run_server

    try:
        return run_server(engine_config, server_config, speculate=not args.no_speculate,
                          access_log=not args.no_access_log)
    except OSError as e:  # the port is taken, the address is not local, ...
        print(f"fastcodellama serve: {e}", file=sys.stderr)
        return 1
