"""Core (all stages): the one way hepprep writes a file or publishes a folder.

A reader never sees half of anything hepprep writes. A file goes to a unique hidden
temporary name beside its target (``.<name>.tmp-<host>-<pid>-<random>``), is flushed and
fsync'ed, and is renamed over the target; the folder is fsync'ed so that the rename
survives a crash of the machine. Any failure removes the temporary file. Because every
writer has its own temporary name, two runs writing the same file never write into each
other's temporary file: the last rename wins, whole. Files are created with mode 0666
less the umask, as any other program would (colleagues on a shared machine can read them
when the umask says so).

A whole output folder (prepare's) is built in a hidden sibling folder and renamed into
place the same way (`atomic_dir`).

A process killed between creating a temporary and renaming it leaves it behind.
`remove_stale_temp` deletes the temporaries whose writer is gone: written on this host by
a process that no longer exists. Temporaries of live writers, and of other hosts sharing
the filesystem, are left alone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from analysis.errors import StageInputError

__all__ = ["atomic_dir", "atomic_file", "atomic_path", "fsync_dir", "fsync_tree", "read_json",
           "remove_stale_temp", "temp_name", "write_bytes_atomic", "write_json_atomic",
           "write_text_atomic"]

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
# .<target name>.tmp-<host>-<pid>-<random>  (and .<name>.old-<host>-<pid>-<random> for a
# folder being replaced)
_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}$")


def temp_name(path: str | Path, kind: str = "tmp") -> Path:
    """A fresh hidden name beside ``path`` for this process: ``.<name>.<kind>-<host>-<pid>-<random>``.

    Readers of ``part-*.parquet`` globs and pyarrow datasets skip names starting with a dot.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems refuse fsync on a directory
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_file(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path`` through, for writers that want a file name.

    The caller writes the whole file at the yielded path (pyarrow, uproot, matplotlib);
    when the block ends without an error the file is fsync'ed and renamed to ``path``.
    On an error it is removed, and ``path`` is untouched.

    Example
    -------
    >>> with atomic_path(out / "part-0.parquet") as tmp:  # doctest: +SKIP
    ...     pyarrow.parquet.write_table(table, tmp)
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        _fsync_file(tmp)
        _publish_file(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **open_args: Any) -> Iterator[IO[Any]]:
    """An open file whose content replaces ``path`` whole when the block ends without error.

    ``mode`` is ``"wb"`` or ``"w"`` (text; ``open_args`` such as ``encoding`` pass through).
    The file is created exclusively with mode 0666 less the umask.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, mode, **open_args) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _publish_file(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 2) -> None:
    """Write ``data`` as JSON (keys in insertion order, a final newline) to ``path`` atomically.

    Non-finite floats are refused (`ValueError`): JSON has no NaN or Infinity, and a file
    that other tools cannot read is a file half-written.
    """
    text = json.dumps(data, indent=indent, allow_nan=False)
    write_text_atomic(path, text + "\n")


def read_json(path: str | Path, what: str, *, expect: type | None = None, fix: str = "") -> Any:
    """Read a JSON file hepprep wrote, or raise `StageInputError` naming the file and ``what`` it is.

    ``what`` says what the file is for the message (``"the skim manifest"``); with ``expect``
    (``dict``, ``list``) anything else is refused too, and ``fix`` ends that message.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StageInputError(f"{path}: no such file ({what})") from None
    except IsADirectoryError:
        raise StageInputError(f"{path}: is a folder, expected {what} (a JSON file)") from None
    except UnicodeDecodeError:
        raise StageInputError(f"{path}: {what} is not text (a corrupt or foreign file)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise StageInputError(f"{path}: {what} is not valid JSON ({err})") from None
    if expect is not None and not isinstance(data, expect):
        kind = {dict: "a JSON object", list: "a JSON list"}.get(expect, expect.__name__)
        raise StageInputError(f"{path}: {what} is not {kind}" + (f"; {fix}" if fix else ""))
    return data


def _writer_gone(match: re.Match[str]) -> bool:
    """True when the temporary's writer ran on this host and no longer exists."""
    if match["host"] != _HOST:
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def remove_stale_temp(folder: str | Path, *, target: str | None = None) -> list[Path]:
    """Delete the temporaries in ``folder`` whose writer is gone; return what was removed.

    Parameters
    ----------
    folder : str or Path
        Where to look (not recursive).
    target : str or None
        Only the temporaries of this target name (``"prepared"`` for ``.prepared.tmp-*``).
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or (target is not None and match["target"] != target):
            continue
        if not _writer_gone(match):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def fsync_tree(folder: str | Path) -> None:
    """fsync every file and folder under ``folder`` (before the folder is renamed into place)."""
    folder = Path(folder)
    for root, _dirs, files in os.walk(folder):
        for name in files:
            _fsync_file(Path(root) / name)
        fsync_dir(root)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A hidden sibling folder to build ``path`` in; it replaces ``path`` when the block succeeds.

    Stale temporary folders of earlier, killed writers of ``path`` are removed first. On
    success every file is fsync'ed, an existing ``path`` is renamed aside, the new folder
    renamed into place and the old one deleted: a reader sees the old folder or the new
    one, never a mixture. On an error the temporary folder is deleted.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(path.parent, target=path.name)
    tmp = temp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        old = None
        if path.exists():
            old = temp_name(path, "old")
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
