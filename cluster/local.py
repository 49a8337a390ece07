"""A throwaway multi-node Ray cluster on loopback, for tests and benchmarks on one machine.

Each node gets its own loopback address (127.0.0.2, .3, ...): Ray would otherwise rewrite
127.0.0.1 to the machine's eth0 address. The cluster lives in its own short temp dir (Unix socket
paths are limited to 107 bytes) so :func:`leftover_processes` can find anything it left behind.
It is made under ``$TMPDIR`` (``/tmp`` when that path is too long for the sockets), and ``RAY_TMPDIR``
points into it while the cluster runs: Ray writes its "current cluster" address file into
``$RAY_TMPDIR/ray/`` and expects that folder to exist, which on a fresh machine it does not; this
also keeps a later ``ray.init()`` elsewhere on the machine from attaching to the test cluster.
Token auth is turned off for the cluster's processes (Ray 2.59+ would switch it on when an earlier
``ray.init`` left ``~/.ray/auth_token``, and worker nodes then fail to join), node death is noticed
in about 3 s instead of 14, and the dashboard and usage statistics stay off.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trident_search.cluster.runtime import WORKER_ENV, connect, import_ray
from trident_search.cluster.signals import kept_fault_handlers

CLUSTER_ENV = {**WORKER_ENV, "RAY_AUTH_MODE": "disabled"}
# <root>/tr-ray-XXXXXXXX/session_<date>_<time>_<us>_<pid>/sockets/plasma_store.N within 107 bytes.
MAX_TEMP_ROOT = 24
FAST_HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


@dataclass
class LocalCluster:
    """A running loopback cluster; ``nodes[0]`` is the head."""

    cluster: Any  # ray.cluster_utils.Cluster
    temp_dir: Path
    cpus_per_node: float
    nodes: list[Any] = field(default_factory=list)

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_node(self) -> Any:
        ip = f"127.0.0.{len(self.nodes) + 2}"
        node = self.cluster.add_node(num_cpus=self.cpus_per_node, node_ip_address=ip)
        self.nodes.append(node)
        self.cluster.wait_for_nodes()
        return node

    def kill_node(self, node: Any) -> None:
        """Hard-stop a worker node (its raylet and workers die; the GCS notices within seconds)."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.nodes.remove(node)


@contextmanager
def local_cluster(nodes: int = 3, cpus_per_node: float = 2.0) -> Iterator[LocalCluster]:
    """Start ``nodes`` loopback nodes, connect this process as driver, and tear it all down after."""
    import_ray()
    from ray.cluster_utils import Cluster

    temp_dir = Path(tempfile.mkdtemp(prefix="tr-ray-", dir=_short_temp_root()))
    (temp_dir / "ray").mkdir()  # Ray's default temp dir, where it writes ray_current_cluster
    env = {**CLUSTER_ENV, "RAY_TMPDIR": str(temp_dir)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cluster = None
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": cpus_per_node,
                "node_ip_address": "127.0.0.2",
                "include_dashboard": False,
                "temp_dir": str(temp_dir),
                "_system_config": FAST_HEALTH_CHECK,
            },
        )
        local = LocalCluster(cluster, temp_dir, cpus_per_node, nodes=[cluster.head_node])
        for _ in range(nodes - 1):
            local.add_node()
        connect(cluster.address)
        yield local
    finally:
        import ray

        with kept_fault_handlers():  # ray.shutdown resets SIGSEGV & co. to the default
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp_dir, ignore_errors=True)


def _short_temp_root() -> str:
    """``$TMPDIR`` (what :mod:`tempfile` uses), or ``/tmp`` when socket paths under it would be too long."""
    root = tempfile.gettempdir()
    return root if len(root) <= MAX_TEMP_ROOT else "/tmp"


def leftover_processes(temp_dir: Path) -> list[int]:
    """Pids of live processes whose command line mentions ``temp_dir`` (a leak check)."""
    needle = str(temp_dir).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids
