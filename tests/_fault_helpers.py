"""Fault-injection test helpers (skim and prepare on dask): SIGKILL a worker in the middle of a stage.

`KillWorkerOnce` is a dask `WorkerPlugin`: the first worker that starts its ``after``-th task
whose key starts with ``prefix`` writes its pid to ``flag`` and SIGKILLs itself, so the kill
lands while the stage is running (that worker holds finished results and one task in
flight, others are still queued) rather than at a moment chosen by a timer. The flag file
is created with O_EXCL: exactly one worker dies, even after the nanny restarts it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin


class KillWorkerOnce(WorkerPlugin):
    """SIGKILL the worker process that starts the ``after``-th task matching ``prefix``."""

    name = "hepprep-kill-worker-once"

    def __init__(self, flag: str, prefix: str, after: int):
        self.flag, self.prefix, self.after = flag, prefix, after
        self.started = 0

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or not str(key).startswith(self.prefix):
            return
        self.started += 1
        if self.started < self.after:
            return
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # another worker was the victim already
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def kill_one_worker(client: Client, flag: Path, *, prefix: str, after: int) -> Iterator[Path]:
    """Arm `KillWorkerOnce` on every worker for the duration of the block; yields ``flag``."""
    flag = Path(flag)
    with contextlib.suppress(FileNotFoundError):
        flag.unlink()
    client.register_plugin(KillWorkerOnce(str(flag), prefix, after))
    try:
        yield flag
    finally:
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(KillWorkerOnce.name)


def killed_pid(flag: Path) -> int:
    """The pid the plugin killed (the test fails if no worker was killed)."""
    assert flag.exists(), "no worker was killed: the stage finished before the fault was injected"
    return int(flag.read_text())
