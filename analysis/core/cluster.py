"""Cluster factory (all dask stages): one place that turns configuration into a dask Client.

Precedence: an explicit ``--scheduler ADDR``, then ``DASK_SCHEDULER_ADDRESS``, then the
``[cluster]`` section of the config (a LocalCluster by default; Slurm or HTCondor through
dask-jobqueue).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from analysis.core.optional import optional_import

if TYPE_CHECKING:  # core sits below the configuration: it takes a section, not the module
    from analysis.config import ClusterConfig

__all__ = ["dask_client", "describe_cluster", "resolve_scheduler"]


def resolve_scheduler(cluster: ClusterConfig, scheduler: str | None = None) -> str | None:
    """The address of an existing scheduler to connect to, or None to start a cluster."""
    if scheduler:
        return scheduler
    env = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if env:
        return env
    if cluster.kind == "address":
        return cluster.address
    return None


def describe_cluster(cluster: ClusterConfig, scheduler: str | None = None) -> str:
    """One line saying what `dask_client` would connect to or start."""
    address = resolve_scheduler(cluster, scheduler)
    if address:
        return f"existing dask scheduler at {address}"
    if cluster.kind == "local":
        return (f"dask LocalCluster: {cluster.n_workers} worker processes x "
                f"{cluster.threads_per_worker} threads, {cluster.memory_limit} each")
    return f"dask-jobqueue {cluster.kind} cluster scaled to {cluster.n_workers} jobs ({cluster.jobqueue})"


@contextlib.contextmanager
def dask_client(cluster: ClusterConfig, scheduler: str | None = None,
                *, n_workers: int | None = None) -> Iterator["distributed.Client"]:  # noqa: F821
    """Connect to, or start and later stop, the dask cluster the configuration names.

    Parameters
    ----------
    cluster : ClusterConfig
        The ``[cluster]`` section.
    scheduler : str or None
        ``--scheduler ADDR``; overrides the configuration.
    n_workers : int or None
        Overrides ``cluster.n_workers`` for a cluster started here.
    """
    from distributed import Client, LocalCluster

    address = resolve_scheduler(cluster, scheduler)
    if address:
        with Client(address) as client:
            yield client
        return
    workers = n_workers or cluster.n_workers
    if cluster.kind == "local":
        # The scheduler and workers listen on the loopback interface only, as does the
        # dashboard unless `cluster.dashboard_address` opens it.
        with LocalCluster(n_workers=workers, threads_per_worker=cluster.threads_per_worker,
                          memory_limit=cluster.memory_limit, processes=True, host="127.0.0.1",
                          dashboard_address=cluster.dashboard_address) as local, Client(local) as client:
            yield client
        return
    jobqueue = optional_import("dask_jobqueue", purpose=f"cluster kind {cluster.kind!r}")
    cls = {"slurm": jobqueue.SLURMCluster, "htcondor": jobqueue.HTCondorCluster}[cluster.kind]
    options = {"cores": cluster.threads_per_worker, "memory": cluster.memory_limit, **cluster.jobqueue}
    with cls(**options) as batch, Client(batch) as client:
        batch.scale(workers)
        yield client
