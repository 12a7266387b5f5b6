"""The run dir: one writer at a time, no fresh start on top of an earlier run, and the first files written.

A run holds an exclusive lock (``flock``) on ``<run dir>/.alttrain.lock`` for its whole life. The
kernel drops it when the process ends, however it ends (``kill -9`` included), so a lock is never
stuck; a second run into the same dir, fresh or resumed, is refused with the holder's pid. The lock
file is never deleted: deleting it would let two runs lock two different files of the same name.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from alttrain.errors import ConfigError

LOCK_NAME = ".alttrain.lock"
# Files whose presence means a run dir already holds a run.
RUN_MARKERS = (".hydra/config.yaml", "checkpoints", "metrics.json", "samples")


class RunDirLock:
    """An exclusive, non-blocking lock on a run dir, held until :meth:`release` or the process ends."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.path = Path(run_dir), Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`ConfigError` naming the pid that holds it. Writes nothing else."""
        check_writable(self.run_dir, "the run dir (hydra.run.dir)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise ConfigError(f"run dir {self.run_dir} is in use by {who}, another alttrain run writing there; "
                              "wait for it to end, or choose another hydra.run.dir") from None
        self.fd = fd

    def mark_owner(self) -> None:
        """Write this process's pid into the lock file (after every check passed: a refused start writes nothing)."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def check_writable(directory: Path, what: str) -> None:
    """Refuse a path that is a file, or a directory this process cannot write, naming ``what``."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{what} {directory} is a file, not a directory; choose another hydra.run.dir")
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {directory} is not writable ({probe} is read-only for this user); choose a "
                          "writable hydra.run.dir")


def holds_run(run_dir: Path) -> str | None:
    """The first file that shows ``run_dir`` already holds a run, or None."""
    taken = [m for m in RUN_MARKERS if (run_dir / m).exists()] + [p.name for p in run_dir.glob("events.out.tfevents.*")]
    return taken[0] if taken else None


def check_run_dir(run_dir: Path, resume_path: Path | None, fresh_allowed: bool = False) -> None:
    """Refuse to start a fresh run on top of an earlier one (resuming into it is fine).

    ``fresh_allowed``: ``resume=auto`` found no checkpoint, so what is there is a run that died before
    its first one, and a fresh start is what continuing it means.
    """
    taken = holds_run(run_dir)
    if taken is None or fresh_allowed:
        return
    if resume_path is not None and run_dir.resolve() in resume_path.resolve().parents:
        return
    raise ConfigError(f"run dir {run_dir} already holds a run ({taken}); pass resume={run_dir} (or resume=auto) to "
                      "continue it, or choose another hydra.run.dir")


def write_run_config(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> str:
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    text = OmegaConf.to_yaml(cfg, resolve=True)
    (hydra_dir / "config.yaml").write_text(text)
    (hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    return text
