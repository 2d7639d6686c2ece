"""``pitstop serve``: the OpenAI-compatible HTTP server (FastAPI + uvicorn) over one engine.

SIGINT/SIGTERM: ``DrainingServer`` (``pitstop/server/uvicorn_server.py``) stops accepting connections, lets
in-flight requests finish for up to ``--shutdown-timeout`` seconds, then stops the engine thread, which aborts what
is left (those streams end with an error event), then runs uvicorn's own shutdown; a second signal skips the drain.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from pitstop.server.limits import RequestLimits
from pitstop.tools.registry import PARSERS


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", action="append", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/*; repeat for several tenants, each with its own "
                        "programs (default: $PITSTOP_API_KEY, none)")
    p.add_argument("--cache-isolation", default="none", choices=["none", "per-key"],
                   help="per-key: tenants (API keys) never share prefix-cache blocks (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests allowed to wait beyond --max-num-seqs; more get 429 (default: %(default)s)")
    p.add_argument("--served-model-name", action="append", default=None,
                   help="name(s) clients use in 'model' (default: the --model value and its folder name)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="seconds in-flight requests get to finish on SIGINT/SIGTERM (default: %(default)s)")
    p.add_argument("--program-idle-timeout", type=float, default=600.0,
                   help="seconds after which an agent program with no running or waiting turn is ended and its "
                        "pinned KV released (default: %(default)s)")
    p.add_argument("--max-programs", type=int, default=10_000,
                   help="most live agent programs; a new one over the bound ends the least recently active idle "
                        "program, or gets 429 when none is idle (default: %(default)s)")
    d = RequestLimits()
    p.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes,
                   help="request body size limit in bytes; over it: 413 (default: %(default)s)")
    p.add_argument("--max-n", type=int, default=d.max_n, help="most completions per request (default: %(default)s)")
    p.add_argument("--max-logprobs", type=int, default=d.max_logprobs,
                   help="most logprobs / top_logprobs per token (default: %(default)s)")
    p.add_argument("--max-stop", type=int, default=d.max_stop, help="most stop strings (default: %(default)s)")
    p.add_argument("--max-stop-chars", type=int, default=d.max_stop_chars,
                   help="longest stop string in characters (default: %(default)s)")
    p.add_argument("--max-logit-bias", type=int, default=d.max_logit_bias,
                   help="most logit_bias entries (default: %(default)s)")
    p.add_argument("--max-tokens-limit", type=int, default=None,
                   help="most tokens one request may ask to generate (default: up to the context length)")
    p.add_argument("--tool-call-parser", default=None, choices=sorted(PARSERS),
                   help="format of tool calls under tool_choice=auto, and of the tool prompt for chat templates "
                        "without tools (default: inferred from the chat template, else hermes)")
    p.add_argument("--tool-history", default="generated", choices=["generated", "template"],
                   help="render an assistant turn with tool calls that this server returned, when it comes back in "
                        "a later request, as the text the model generated (its KV cache is reused to the end) or "
                        "as the chat template renders the calls (default: %(default)s)")
    p.add_argument("--replicas", type=int, default=1,
                   help="engine replicas; more than 1 serves them on Ray Serve behind one API, each with the engine "
                        "flags here (threads, KV memory...); 1: this single-process server, no Ray (default: 1)")
    p.add_argument("--router", default="program-affinity",
                   help="with --replicas > 1: round-robin, least-loaded, prefix-affinity, two-choice or "
                        "program-affinity (default: %(default)s)")
    p.add_argument("--router-config", default=None, metavar="JSON",
                   help='with --replicas > 1: the router\'s arguments as a JSON object, e.g. \'{"index": "exact"}\' '
                        "(match prefixes on the replicas' KV events instead of what was routed where) or "
                        '\'{"load_abs_threshold": 2}\' (program-affinity: move a turn off a home with more than 2 '
                        "outstanding requests over the least-loaded replica)")
    p.add_argument("--migration-config", default=None, metavar="JSON",
                   help="with --replicas > 1: move a waiting program's pinned KV from the most to the least loaded "
                        "replica through Ray's object store (Llumnix), with these settings as a JSON object, e.g. "
                        '\'{"load_abs_threshold": 2, "period_s": 1.0}\' or \'{}\' (default: off)')
    p.add_argument("--ray-address", default=None,
                   help="the Ray cluster to join ('auto' or an address) or 'local' (start a local Ray instance, also "
                        "with --replicas 1: the Ray-served path with one replica); with --replicas > 1 and no "
                        "address: a local instance. Without it, --replicas 1 is the single-process server")
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
    if args.replicas > 1 or args.ray_address is not None:
        return run_replicas(args)
    engine = build_engine(EngineConfig(**engine_kwargs(args), program_idle_timeout=args.program_idle_timeout,
                                       max_programs=args.max_programs),
                          keep_step_history=False)  # a record per step grows without bound in a server
    names = args.served_model_name or [args.model]
    for extra in (Path(args.model).name, Path(str(engine.model_dir)).name if engine.model_dir else None):
        if extra and extra not in names:
            names.append(extra)
    limits = RequestLimits(**_limit_kwargs(args))
    keys = _api_keys(args)
    died: list[BaseException] = []
    servers: list = []

    def on_engine_death(err: BaseException) -> None:  # stop serving 503s: shut down, exit non-zero below
        died.append(err)
        for srv in servers:
            srv.should_exit = True  # uvicorn's main loop polls this flag

    app = create_app(engine, names, api_key=keys, max_queue=args.max_queue, debug_endpoints=args.debug_endpoints,
                     tool_call_parser=args.tool_call_parser, tool_history=args.tool_history,
                     limits=limits, cache_isolation=args.cache_isolation, on_engine_death=on_engine_death)
    print(f"pitstop: serving {names[0]} on http://{args.host}:{args.port}/v1 "
          f"(max_model_len={engine.max_model_len}, KV blocks={engine.kv_manager.num_blocks}; "
          f"{engine.executor.kernels.summary()})", flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=5)
    servers.append(DrainingServer(config, app.state.async_engine, args.shutdown_timeout))
    servers[0].run()
    if died:
        print(f"pitstop: error: the engine thread died ({type(died[0]).__name__}); see the log above", flush=True)
        return 3
    return 0



def _limit_kwargs(args: argparse.Namespace) -> dict:
    return dict(max_request_bytes=args.max_request_bytes, max_n=args.max_n, max_logprobs=args.max_logprobs,
                max_stop=args.max_stop, max_stop_chars=args.max_stop_chars, max_logit_bias=args.max_logit_bias,
                max_tokens=args.max_tokens_limit)


def _api_keys(args: argparse.Namespace) -> list[str] | None:
    return args.api_key or ([os.environ["PITSTOP_API_KEY"]] if os.environ.get("PITSTOP_API_KEY") else None)


def run_replicas(args: argparse.Namespace) -> int:
    """``--replicas N`` (N > 1): N engine replicas on Ray Serve (``pitstop.server.ray``). Returns the exit code:
    2 when Ray Serve is not installed or the router name is unknown."""
    from pitstop.cli.engine_args import engine_kwargs
    try:
        from pitstop.server.ray.app import build_app, serve_forever
    except ImportError as e:
        print(f"pitstop: error: --replicas > 1 needs Ray Serve (pip install 'ray[serve]'): {e}", flush=True)
        return 2
    names = args.served_model_name or [args.model]
    if Path(args.model).name not in names:
        names.append(Path(args.model).name)
    engine_config = dict(engine_kwargs(args), program_idle_timeout=args.program_idle_timeout,
                         max_programs=args.max_programs)
    app_kwargs = dict(model_names=names, api_key=_api_keys(args), max_queue=args.max_queue,
                      debug_endpoints=args.debug_endpoints, limits=_limit_kwargs(args),
                      cache_isolation=args.cache_isolation, tool_call_parser=args.tool_call_parser,
                      tool_history=args.tool_history)
    try:
        router_kwargs = json.loads(args.router_config) if args.router_config else {}
        if not isinstance(router_kwargs, dict):
            raise ValueError("--router-config must be a JSON object")
        migration = json.loads(args.migration_config) if args.migration_config else None
        if migration is not None and not isinstance(migration, dict):
            raise ValueError("--migration-config must be a JSON object")
        app = build_app(engine_config, app_kwargs, args.replicas, router=args.router, router_kwargs=router_kwargs,
                        migration=migration)
    except (ValueError, TypeError) as e:
        print(f"pitstop: error: {e}", flush=True)
        return 2
    address = None if args.ray_address == "local" else args.ray_address
    return serve_forever(app, args.host, args.port, address, args.log_level)
