"""CSV: every scalar as one row ``step,name,value`` of a single file in the run dir (``scalars.csv``).

Long format, so a new scalar name never changes the columns and the file only grows by appending.
Read it with pandas, and pivot to one column per scalar::

    import pandas as pd
    df = pd.read_csv("outputs/2026-11-24/10-00-00/scalars.csv")
    wide = df.pivot_table(index="step", columns="name", values="value", aggfunc="last")
    wide["loss/D"].plot()

Values are written with Python's ``repr``, which reads back to the same float. The file is flushed
at every log step, so a killed run keeps the rows of every step it logged. Final metrics appear as
``hparam/<name>`` rows at the last step; images and text are not written.

On resume from step ``S`` the rows past ``S`` (written by a crashed run after its checkpoint) are
dropped first, as TensorBoard's ``purge_step`` does, by rewriting the file to a temporary one and
renaming it over the old one, so a crash during the rewrite leaves the old file whole. Rows at ``S``
are kept: metrics at ``S`` were written before that checkpoint (the scalars of step ``S`` itself
are then written again by the resumed run: ``aggfunc="last"`` above picks one).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from alttrain.callbacks.loggers.base import HParamValue, Logger
from alttrain.errors import ConfigError

HEADER = ("step", "name", "value")


class CSV(Logger):
    """Appends ``step,name,value`` rows to ``log_dir/filename``."""

    def __init__(self, log_dir: str | Path, filename: str = "scalars.csv"):
        if not isinstance(filename, str) or not filename or Path(filename).name != filename:
            raise ConfigError(f"logger.csv.filename must be a plain file name such as scalars.csv, got {filename!r}")
        self.path = Path(log_dir) / filename
        self._file = None
        self._writer = None

    def start(self, start_step: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if start_step and self.path.is_file():
            purge_after(self.path, start_step)
            self._file = self.path.open("a", newline="", encoding="utf-8")
        else:
            self._file = self.path.open("w", newline="", encoding="utf-8")  # a fresh run starts a fresh file
        self._writer = csv.writer(self._file, lineterminator="\n")
        if self._file.tell() == 0:
            self._writer.writerow(HEADER)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        self._writer.writerows((step, name, repr(float(value))) for name, value in scalars.items())
        self._file.flush()  # to the OS: a killed process keeps its rows

    def log_hparams(self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], step: int) -> None:
        self.log_scalars(metrics, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None


def purge_after(path: Path, step: int) -> None:
    """Drop the rows of ``path`` past ``step`` (and any torn last line), atomically."""
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a line torn by a kill mid-write
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if _keep(row, step)]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(HEADER)
            writer.writerows(rows)
            out.flush()
            os.fsync(out.fileno())  # the data is on disk before the rename makes it the file
        os.chmod(tmp, path.stat().st_mode & 0o7777)  # mkstemp's 0600 would otherwise replace the file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _keep(row: list[str], step: int) -> bool:
    # The header, and anything that is no row of this logger, is not kept as a row.
    return len(row) == len(HEADER) and row[0].isdigit() and int(row[0]) <= step


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
