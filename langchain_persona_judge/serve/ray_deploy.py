"""Scale-out on Ray Serve: ``persona-judge serve --replicas N [--ray-address ADDR]``.

The model tier is a Ray Serve deployment: each replica is a Ray actor that loads the model once and runs the
same app as a single server (:func:`~.app.create_app`) in process, on ``threads`` CPU threads (Ray reserves as
many CPUs for it, so replicas never oversubscribe the cores they were given). The web tier is
:class:`~.ray_front.RelayApp` in this process, under uvicorn: it calls the deployment through its handle, so a
replica that dies is seen for what it is (see :mod:`.ray_front`) rather than as an opaque proxy error. Ray routes
each request to the less loaded of two replicas, holds at most ``max_concurrency`` requests on a replica and
queues ``max_queue`` more (one more is answered 429), replaces a replica that dies, and scales between
``min_replicas`` and ``max_replicas`` when they are given. Without ``--ray-address`` a local Ray is started, and
stopped with the server.

``ray[serve]`` is in the ``serve`` extra; nothing here imports Ray before it is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidOptionError, ModelLoadError
from .app import create_app
from .errors import ApiError
from .ray_front import REPLICA_MESSAGE, Lifespan, Message, RelayApp, run_asgi
from .settings import ServeSettings

DEPLOYMENT = "PersonaJudge"
"""The deployment's name (its replicas are ``SERVE_REPLICA::<app>#PersonaJudge#<id>`` actors)."""
COALESCE_S = 0.02
"""How long a replica lets a stream's chunks gather before sending them to the web tier as one message (each
message is a Ray object: fewer of them cost the two tiers less CPU; 20 ms is below what a reader notices)."""
RAY_INSTALL = "pip install 'langchain-persona-judge[serve]'  (or: pip install 'ray[serve]')"


@dataclass(frozen=True)
class RayOptions:
    """How the model tier runs on Ray (``persona-judge serve --replicas ...``)."""

    replicas: int = 1
    """Replicas at start (and always, without autoscaling bounds)."""
    min_replicas: int | None = None
    max_replicas: int | None = None
    """Autoscaling bounds: given, Ray Serve adds or removes replicas between them by their load."""
    threads_per_replica: int | None = None
    """CPU threads of each replica (torch and llama.cpp); None: this machine's cores / the largest replica count."""
    ray_address: str | None = None
    """A running cluster to join (``ray://...`` or ``HOST:PORT``); None: start a local Ray, stopped on exit."""
    app_name: str = "persona-judge"
    log_level: str = "info"

    def __post_init__(self) -> None:
        for name in ("replicas", "min_replicas", "max_replicas", "threads_per_replica"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < (0 if name == "min_replicas" else 1)):
                raise InvalidOptionError(f"--{name.replace('_', '-')} must be a positive integer, not {value!r}.")
        low = self.min_replicas if self.min_replicas is not None else self.replicas
        high = self.max_replicas if self.max_replicas is not None else self.replicas
        if not low <= self.replicas <= high:
            raise InvalidOptionError(
                f"--replicas {self.replicas} is outside the autoscaling bounds [{low}, {high}]; pass "
                "--min-replicas <= --replicas <= --max-replicas."
            )

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas

    def threads(self, cpus: int | None = None) -> int:
        """Threads per replica: the option, else the cores shared out among the most replicas (at least 1)."""
        if self.threads_per_replica is not None:
            return self.threads_per_replica
        return max(1, (cpus or os.cpu_count() or 1) // self.most_replicas)


def deployment_options(settings: ServeSettings, options: RayOptions, threads: int) -> dict[str, Any]:
    """The Ray Serve deployment's options: replicas or autoscaling bounds, one replica's CPUs (and a GPU with
    ``--device cuda``), its admission limits (``max_concurrency`` requests at once on a replica, ``max_queue`` waiting for one), shutdown."""
    concurrency = settings.max_concurrency or 16
    resources: dict[str, Any] = {"num_cpus": threads}
    if (settings.device or "").startswith("cuda"):
        resources["num_gpus"] = 1  # Ray gives the replica a GPU of its own (its CUDA_VISIBLE_DEVICES)
    out: dict[str, Any] = {
        "ray_actor_options": resources,
        "max_ongoing_requests": concurrency,
        "max_queued_requests": -1 if settings.max_queue is None else settings.max_queue,
        "graceful_shutdown_wait_loop_s": 0.5,
        "graceful_shutdown_timeout_s": 5.0,
        # A model that cannot load fails the same way every time: report it, do not retry for minutes.
        "max_constructor_retry_count": 1,
        "logging_config": {"log_level": "DEBUG" if options.log_level == "debug" else "WARNING",
                           "enable_access_log": options.log_level == "debug"},
    }
    if options.autoscaling:
        out["autoscaling_config"] = {
            "min_replicas": options.min_replicas if options.min_replicas is not None else options.replicas,
            "max_replicas": options.most_replicas,
            "initial_replicas": options.replicas,
            "target_ongoing_requests": concurrency,
        }
    else:
        out["num_replicas"] = options.replicas
    return out


def replica_name() -> str:
    """``<Ray replica id>@<host>:<pid>``: what ``persona_judge.replica`` says on a Ray replica."""
    from ray import serve

    unique = serve.get_replica_context().replica_id.unique_id
    return f"{unique}@{socket.gethostname()}:{os.getpid()}"


class PersonaJudgeReplica:
    """One replica (a Ray actor): the model, loaded once on ``threads`` threads, and the app around it."""

    async def __init__(self, settings: ServeSettings, threads: int) -> None:
        import torch

        from ..runtime import shared_model

        torch.set_num_threads(threads)  # llama.cpp takes torch's thread count too
        model = shared_model(settings.model, device=settings.device, dtype=settings.dtype, backend=settings.backend)
        self.name = replica_name()
        self.app = create_app(dataclasses.replace(settings, hf_model=model, tokenizer=None, replica=self.name))
        self.lifespan = Lifespan(self.app)
        await self.lifespan.startup()

    async def http(self, request: dict[str, Any]) -> AsyncIterator[list[Message]]:
        """One HTTP request through the app: first this replica's name, then the app's messages."""
        yield [{"type": REPLICA_MESSAGE, "replica": self.name}]
        messages = run_asgi(self.app, request, self.lifespan.state, coalesce=COALESCE_S)
        async with contextlib.aclosing(messages):
            async for batch in messages:
                yield batch

    async def __del__(self) -> None:
        with contextlib.suppress(Exception):
            await self.lifespan.shutdown()


def classify_ray_error(exc: BaseException) -> tuple[ApiError, bool]:
    """What a failed replica stream raised → the client's error, and whether to send the request again (only
    when the replica it was sent to is gone)."""
    from ray.exceptions import RayActorError, RayTaskError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    cause = getattr(exc, "cause", None) if isinstance(exc, RayTaskError) else None
    if isinstance(exc, BackPressureError):
        return ApiError(429, "Every replica is busy and the server's queue is full; retry in a moment.",
                        code="queue_full", headers={"Retry-After": "1"}), False
    if isinstance(exc, (RayActorError, ReplicaUnavailableError)) or isinstance(cause, RayActorError):
        return ApiError(503, "the replica is gone (it crashed or was stopped); retry the request.",
                        code="replica_unavailable", headers={"Retry-After": "1"}), True
    if isinstance(exc, DeploymentUnavailableError):
        return ApiError(503, "No replica is running; retry in a few seconds.", code="replica_unavailable",
                        headers={"Retry-After": "5"}), False
    return ApiError(500, f"The server failed to answer ({type(exc).__name__}); this is a bug, please report it.",
                    code="internal_error"), False


def require_ray() -> None:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        raise InvalidOptionError(f"--replicas runs on Ray Serve, which is not installed: {RAY_INSTALL}") from exc


def start_ray(options: RayOptions) -> bool:
    """Join ``options.ray_address``, or start a local Ray sized for the replicas; True if this process started
    the cluster (and so stops it)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves this machine
    quiet = options.log_level not in ("debug", "info")
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": not quiet,
                              "logging_level": "WARNING" if quiet else options.log_level.upper()}
    if options.ray_address:
        ray.init(address=options.ray_address, **common)
        return False
    cores = os.cpu_count() or 1
    wanted = options.threads(cores) * options.most_replicas
    if wanted > cores:
        print(f"persona-judge serve: warning: {options.most_replicas} replica(s) x {options.threads(cores)} "
              f"thread(s) oversubscribe this machine's {cores} core(s); answers will be slower.",
              file=sys.stderr, flush=True)
    # The replicas pass the object store only small messages (an answer's chunks): a small store starts faster.
    ray.init(num_cpus=max(cores, wanted), object_store_memory=256 * 2**20, **common)
    return True


def deploy(settings: ServeSettings, options: RayOptions) -> Any:
    """Deploy the replicas on the connected cluster; returns the deployment's handle once every replica is up."""
    from ray import serve

    threads = options.threads()
    serve.start(proxy_location="Disabled",
                logging_config={"log_level": "DEBUG" if options.log_level == "debug" else "WARNING"})
    replica_settings = dataclasses.replace(settings, hf_model=None, tokenizer=None)
    deployment = serve.deployment(PersonaJudgeReplica, name=DEPLOYMENT,
                                  **deployment_options(settings, options, threads))
    try:
        return serve.run(deployment.bind(replica_settings, threads), name=options.app_name, route_prefix=None)
    except RuntimeError as exc:  # Serve says only "failed to update the deployments": find the replica's error
        raise ModelLoadError(
            f"The replicas did not start: {_replica_failure(options.app_name) or exc} (the same flags without "
            "--replicas show the whole error)."
        ) from exc


def _replica_failure(app_name: str) -> str | None:
    """The last line of what Serve recorded about the deployment (a replica's constructor error)."""
    from ray import serve

    with contextlib.suppress(Exception):
        message = serve.status().applications[app_name].deployments[DEPLOYMENT].message
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        return lines[-1] if lines else None
    return None


def stop_ray(own_cluster: bool, app_name: str) -> None:
    """Remove the deployment (all of Serve on a cluster this process started) and leave Ray; a cluster this
    process started stops with it, every replica process included."""
    import ray
    from ray import serve

    def remove() -> None:
        with contextlib.suppress(Exception):
            if own_cluster:
                serve.shutdown()
            else:
                serve.delete(app_name)

    if ray.is_initialized():
        # Bounded: should the cluster be half gone already (its raylet killed), Serve would wait on it forever;
        # leaving Ray then stops a local cluster's processes all the same.
        remover = threading.Thread(target=remove, name="persona-judge-serve-shutdown", daemon=True)
        remover.start()
        remover.join(timeout=30)
    ray.shutdown()


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM: stop serving, as Ctrl-C does."""
    raise KeyboardInterrupt


def front_app(handle: Any, settings: ServeSettings, options: RayOptions) -> RelayApp:
    """The web tier over a deployment handle, with fair admission to every slot the replicas hold (at their most,
    under autoscaling, so that Ray still sees the queue it scales on)."""
    streaming = handle.options(stream=True)
    slots = (settings.max_concurrency or 16) * options.most_replicas
    return RelayApp(lambda request: streaming.http.remote(request), settings, classify_ray_error, slots=slots)


def serve_on_ray(settings: ServeSettings, options: RayOptions, *, host: str, port: int, log_level: str,
                 connections: dict[str, Any] | None = None) -> int:
    """Start (or join) Ray, deploy the replicas, serve the web tier until Ctrl-C or SIGTERM, then stop every
    replica (and the local Ray) before returning 0."""
    import uvicorn

    require_ray()
    previous = signal.getsignal(signal.SIGTERM)
    own_cluster = False
    try:
        own_cluster = start_ray(options)
        signal.signal(signal.SIGTERM, _interrupt)  # after ray.init, which sets its own
        handle = deploy(settings, options)
        print(f"persona-judge serve: {options.replicas} replica(s) on Ray, {options.threads()} thread(s) each; "
              f"serving http://{host}:{port}/v1", file=sys.stderr, flush=True)
        uvicorn.run(front_app(handle, settings, options), host=host, port=port, log_level=log_level,
                    **(connections or {}))
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            stop_ray(own_cluster, options.app_name)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


__all__ = ["DEPLOYMENT", "PersonaJudgeReplica", "RayOptions", "classify_ray_error", "deploy", "deployment_options",
           "front_app", "replica_name", "serve_on_ray", "start_ray", "stop_ray"]
