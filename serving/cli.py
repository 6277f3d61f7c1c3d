"""`dcoder serve MODEL_DIR`: the HTTP API on uvicorn.

    dcoder serve runs/pair/dlm --port 8000 --api-key-file ~/.dcoder-key
    curl -s localhost:8000/health
    curl -s localhost:8000/infill -H "Authorization: Bearer $KEY" \\
         -d '{"input_prefix": "def add(a, b):\\n    ", "input_suffix": "\\n", "n_predict": 16}'

The key can also come from $DCODER_API_KEY (keys on the command line show up in `ps`).
Module level imports only argparse/stdlib so `dcoder --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


class ServeError(ValueError):
    user_error = True


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a model over HTTP (OpenAI, llama.cpp /infill, FIM)",
                              description="Serve a model dir (or a run dir's latest checkpoint) over HTTP.")
    p.add_argument("model_dir", help="model dir from `dcoder export`, or a run dir")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key", help="require this key on /v1/* and /infill (prefer --api-key-file)")
    key.add_argument("--api-key-file", help="file whose first line is the API key")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together per step")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 503s")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser calls from ORIGIN (repeatable); CORS is closed by default")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice; 1 on a crowded machine)")
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--max-body-bytes", type=int, default=2 * 1024 * 1024)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run_serve)


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text().splitlines()[0].strip()
        except (OSError, IndexError) as e:
            raise ServeError(f"cannot read an API key from {args.api_key_file}: {e}") from None
        if not key:
            raise ServeError(f"{args.api_key_file} holds an empty API key")
        return key
    return args.api_key or os.environ.get("DCODER_API_KEY") or None


def run_serve(args: argparse.Namespace) -> int:
    if not Path(args.model_dir).is_dir():
        raise ServeError(f"{args.model_dir} is not a directory")
    for name in ("max_batch", "port"):
        if getattr(args, name) < 1:
            raise ServeError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_queue < 0 or args.request_timeout <= 0 or args.max_body_bytes < 1024:
        raise ServeError("--max-queue must be >= 0, --request-timeout > 0, --max-body-bytes >= 1024")
    import logging

    import torch
    import uvicorn

    if args.threads is not None:
        if args.threads < 1:
            raise ServeError("--threads must be >= 1")
        torch.set_num_threads(args.threads)

    from serving.api import ServerSettings, create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServerSettings(
        model_path=args.model_dir, api_key=_api_key(args), max_batch=args.max_batch,
        max_queue=args.max_queue, cors_origins=list(args.cors_origin), device=args.device, dtype=args.dtype,
        request_timeout_s=args.request_timeout, max_body_bytes=args.max_body_bytes)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=5)
    return 0
