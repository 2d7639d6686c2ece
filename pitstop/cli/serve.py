"""``pitstop serve``: the OpenAI-compatible HTTP server (FastAPI + uvicorn) over one engine.

SIGINT/SIGTERM: ``DrainingServer`` (``pitstop/server/uvicorn_server.py``) stops accepting connections, lets
in-flight requests finish for up to ``--shutdown-timeout`` seconds, then stops the engine thread, which aborts what
is left (those streams end with an error event), then runs uvicorn's own shutdown; a second signal skips the drain.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("PITSTOP_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $PITSTOP_API_KEY, none)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests allowed to wait beyond --max-num-seqs; more get 429 (default: %(default)s)")
    p.add_argument("--served-model-name", action="append", default=None,
                   help="name(s) clients use in 'model' (default: the --model value and its folder name)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="seconds in-flight requests get to finish on SIGINT/SIGTERM (default: %(default)s)")
    p.add_argument("--debug-endpoints", action="store_true", help="expose GET /debug/kv (tests)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    return p


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from pitstop.cli.engine_args import engine_kwargs
    from pitstop.config import EngineConfig
    from pitstop.entrypoints.engine_builder import build_engine
    from pitstop.server.app import create_app
    from pitstop.server.uvicorn_server import DrainingServer

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = build_engine(EngineConfig(**engine_kwargs(args)))
    names = args.served_model_name or [args.model]
    for extra in (Path(args.model).name, Path(str(engine.model_dir)).name if engine.model_dir else None):
        if extra and extra not in names:
            names.append(extra)
    app = create_app(engine, names, api_key=args.api_key, max_queue=args.max_queue,
                     debug_endpoints=args.debug_endpoints)
    print(f"pitstop: serving {names[0]} on http://{args.host}:{args.port}/v1 "
          f"(max_model_len={engine.max_model_len}, KV blocks={engine.kv_manager.num_blocks})", flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=5)
    DrainingServer(config, app.state.async_engine, args.shutdown_timeout).run()
    return 0

