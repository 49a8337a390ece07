"""Joining a Ray cluster the same way from the CLI, the server, the tests and the benchmarks.

``--ray-address`` takes ``local`` (start a private single-machine Ray inside this process),
``auto`` (attach to the cluster already running on this machine, e.g. after ``ray start --head``)
or an address (``host:port`` or ``ray://host:10001``). Every worker gets the same environment:
models load offline, one BLAS/torch thread per worker (Ray's own default, made explicit so the
driver's in-process work matches), and no usage statistics leave the machine.
"""
from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any

from trident_search.cluster.signals import kept_fault_handlers
from trident_search.errors import TridentError

log = logging.getLogger(__name__)

WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


class RayUnavailableError(TridentError, RuntimeError):
    """Ray is not installed, or the cluster at the given address cannot be reached."""


def import_ray() -> ModuleType:
    """``ray``, or an error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            "this command needs Ray: `pip install 'trident-search[ray]'` (ray[data,serve]==2.60.0)"
        ) from None
    return ray


def connect(address: str, *, num_cpus: int | None = None) -> ModuleType:
    """Initialise Ray in this process once (later calls reuse the connection); returns ``ray``."""
    ray = import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": dict(WORKER_ENV)},
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    if address == "local":
        kwargs.update(address="local", include_dashboard=False, num_cpus=num_cpus)
    else:
        kwargs["address"] = address
    try:
        with kept_fault_handlers():  # a JVM in this process keeps its SIGSEGV handler (cluster/signals.py)
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError) as exc:
        raise RayUnavailableError(
            f"cannot join the Ray cluster at {address!r}: {exc}. Use --ray-address local for a "
            "private single-machine Ray, auto for the one started with `ray start --head`, or host:port."
        ) from exc
    log.info("joined Ray at %s: %s", address, ray.cluster_resources())
    return ray
