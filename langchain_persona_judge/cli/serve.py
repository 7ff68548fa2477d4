"""``persona-judge serve``: an OpenAI-compatible server for Persona-judge (``langchain_persona_judge.serve``).

    persona-judge serve                                   # the embedded model on http://127.0.0.1:8000/v1
    persona-judge serve --model model.gguf --port 9000
    persona-judge serve --host 0.0.0.0 --api-keys keys.txt  # another machine may call it, with a key
    persona-judge serve --replicas 2                        # two model replicas on a local Ray Serve
    persona-judge serve --replicas 2 --min-replicas 1 --max-replicas 4 --ray-address HOST:6379

Binding an address other than loopback needs ``--api-keys`` (or ``--no-auth``, to serve without keys on
purpose).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..errors import PersonaJudgeError
from ..runtime import BACKEND_CHOICES
from .ask import UsageError

PROG = "persona-judge serve"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``serve`` flags, on ``parser`` (its own, or a subparser another parser registers)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("-m", "--model", metavar="PATH_OR_ID", help="model (default: the embedded SmolLM2)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="what runs the model (default auto)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", help="weights dtype, e.g. float32")
    parser.add_argument("--served-name", metavar="NAME", help="the model id clients send (default: the model's name)")
    parser.add_argument("--api-keys", metavar="FILE", help="bearer keys, one a line; every /v1 route then needs one")
    parser.add_argument("--no-auth", action="store_true", help="serve a non-loopback address without keys")
    parser.add_argument("--max-concurrency", type=int, default=2, metavar="N", help="decodes at once (default 2)")
    parser.add_argument("--max-queue", type=int, default=64, metavar="N",
                        help="requests waiting for a slot; one more gets 429 (default 64)")
    parser.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, metavar="N",
                        help="larger request bodies get 413 (default 4 MiB)")
    parser.add_argument("--timeout", type=float, metavar="S", help="seconds a request may take (default: no limit)")
    parser.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                        help="seconds a connection may take to send a request's headers, then it is closed (default 10)")
    parser.add_argument("--max-connections", type=int, default=1000, metavar="N",
                        help="open client connections kept, at most the open-files limit less 128 (default 1000)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    ray = parser.add_argument_group("scale-out on Ray Serve (the serve extra: ray[serve])")
    ray.add_argument("--replicas", type=int, metavar="N",
                     help="serve N model replicas on Ray Serve (default: one model in this process, no Ray)")
    ray.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (default: start a local Ray)")
    ray.add_argument("--min-replicas", type=int, metavar="N", help="autoscaling: fewest replicas")
    ray.add_argument("--max-replicas", type=int, metavar="N", help="autoscaling: most replicas")
    ray.add_argument("--threads-per-replica", type=int, metavar="N",
                     help="CPU threads of each replica (default: this machine's cores / the most replicas)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(
        prog=PROG, description="Serve Persona-judge over the OpenAI chat-completions API."))


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` on an ``add_subparsers()`` object; ``run_args`` is its handler (``func``)."""
    parser = add_arguments(subparsers.add_parser("serve", help="serve over the OpenAI chat-completions API"))
    parser.set_defaults(func=run_args)
    return parser


def settings_from(args: argparse.Namespace) -> Any:
    """The server settings of parsed flags; refuses a non-loopback host without keys unless ``--no-auth``."""
    from ..serve import ServeSettings, is_loopback, read_api_keys

    if args.api_keys and args.no_auth:
        raise UsageError("--api-keys and --no-auth contradict each other; pass one.")
    keys = read_api_keys(args.api_keys) if args.api_keys else frozenset()
    if not keys and not args.no_auth and not is_loopback(args.host):
        raise UsageError(
            f"--host {args.host} lets other machines call the server; pass --api-keys FILE (or --no-auth to serve "
            "without keys on purpose)."
        )
    for name in ("port", "max_concurrency", "max_queue", "max_body_bytes"):
        if getattr(args, name) < (0 if name == "max_queue" else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer.")
    return ServeSettings(
        model=args.model, backend=args.backend, device=args.device, dtype=args.dtype, served_name=args.served_name,
        api_keys=keys, max_concurrency=args.max_concurrency, max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes, timeout=args.timeout,
    )


def ray_options_from(args: argparse.Namespace) -> Any:
    """The Ray Serve options of parsed flags, or None to serve one model in this process."""
    ray_flags = ("ray_address", "min_replicas", "max_replicas", "threads_per_replica")
    if args.replicas is None:
        given = [f"--{n.replace('_', '-')}" for n in ray_flags if getattr(args, n) is not None]
        if not given:
            return None
        raise UsageError(f"{', '.join(given)} apply to Ray Serve replicas; pass --replicas N too.")
    from ..serve.ray_deploy import RayOptions

    return RayOptions(replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                      threads_per_replica=args.threads_per_replica, ray_address=args.ray_address,
                      log_level=args.log_level)


def run_args(args: argparse.Namespace) -> int:
    import uvicorn

    from ..serve import create_app

    from ..serve.connections import uvicorn_options

    if args.header_timeout <= 0 or args.max_connections < 1:
        raise UsageError("--header-timeout must be more than 0 seconds and --max-connections at least 1")
    settings = settings_from(args)
    ray_options = ray_options_from(args)
    # The chat app's guard: headers due within --header-timeout, open connections capped below the open-files limit.
    connections = uvicorn_options(args.header_timeout, args.max_connections)
    connections.pop("cap")
    if ray_options is not None:
        from ..serve.ray_deploy import serve_on_ray

        return serve_on_ray(settings, ray_options, host=args.host, port=args.port, log_level=args.log_level,
                            connections=connections)
    app = create_app(settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, **connections)
    return 0


def run(argv: Sequence[str]) -> int:
    """``persona-judge serve ARGS``: serve until interrupted; 2 on a usage error."""
    import sys

    args = build_parser().parse_args(list(argv))
    try:
        return run_args(args)
    except (UsageError, PersonaJudgeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 2


__all__ = ["add_arguments", "build_parser", "ray_options_from", "register", "run", "run_args", "settings_from"]
