"""Durable files: written to a temporary name, fsynced, renamed into place, the directory fsynced.

``kill -9`` or a power cut at any moment leaves either the old file or the new one, whole. Temporary
files are hidden (a leading dot) and carry their writer's pid, so a later writer can remove the ones
a killed process left behind.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO


def remove_stale_temps(ckpt_dir: Path) -> None:
    """Delete temporary files left by writers that were killed mid-write (their process is gone)."""
    for tmp in ckpt_dir.glob(".*.tmp-*-*"):
        pid = tmp.name.rsplit("-", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def _temp_path(path: Path) -> Path:
    # Unique per process and call; the leading dot keeps it out of step_*.pt / last.pt globs.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


class _Recorder(io.RawIOBase):
    """A writable stream that remembers the OSError of a failed write.

    torch.save's zip writer turns a failed write into ``RuntimeError: unexpected pos``, losing the
    cause (a full disk, a quota); the recorded error is the one to report.
    """

    def __init__(self, f: IO[bytes]):
        super().__init__()
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` atomically; an OS error is raised as itself (ENOSPC, EROFS, ...)."""
    tmp = _temp_path(path)
    recorder = None
    try:
        # O_EXCL: never write through a file some other process created; 0o666 honours the umask.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            recorder = _Recorder(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if recorder is not None and recorder.error is not None and exc is not recorder.error:
            raise recorder.error from None
        raise
    fsync_dir(path.parent)


def replace_with_copy(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` hold ``src``'s bytes: a hard link when possible, else a copy."""
    tmp = _temp_path(dst)
    try:
        os.link(src, tmp)  # no second write; src's data is already fsynced
    except OSError:  # file systems without hard links
        with open(src, "rb") as source:
            atomic_write(dst, lambda f: shutil.copyfileobj(source, f))
        return
    try:
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
