"""Finding the images of a folder, and checking them before a run starts.

:func:`scan_folder` lists images as torchvision's ``ImageFolder`` does (sorted class subfolders,
its extensions, files sorted within sorted directories, directory symlinks followed) but enters
each real directory at most once per class. ``os.walk(followlinks=True)``, which torchvision
uses, has no loop guard: a symlink back to a parent repeats the class's images once per level the
kernel resolves (40), and two such links branch 2^40 ways, so the scan never ends.

:func:`verify_headers` opens every file and parses its header (PIL ``verify()``) in a thread pool,
so a corrupt file stops the run at its start, named, instead of hours in.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from alttrain.errors import ConfigError, DataError

log = logging.getLogger("alttrain")

# torchvision.datasets.folder.IMG_EXTENSIONS, compared case-insensitively as torchvision does.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# data.verify=auto checks sets up to this size: a few seconds. One header check costs 70-150 us of CPU
# per file (64-128 px JPEG and PNG from the page cache, measured on a busy 2-core machine), so 20,000
# take 1.5-3 s. Parsing holds the GIL, so the thread pool adds no CPU parallelism; it overlaps the
# file system's latency, which dominates on a cold disk or a network file system.
VERIFY_AUTO_LIMIT = 20_000
CHUNK = 256  # files per thread-pool task: one future per file would cost about as much as the check


def replace_hint(count: int = 1) -> str:
    """The fix for unreadable files: replacing, since removing one breaks every resume of the run."""
    what = "it with a readable image" if count == 1 else "each with a readable image"
    return (f"replace {what} (removing files changes the data set's size, which the data stream's state "
            "records, so a run started on the old set could no longer resume)")


class PathTable:
    """File paths packed into two NumPy arrays instead of a list of ``str`` objects.

    DataLoader workers are forked copies of the training process; touching a Python object updates
    its reference count, which copies its memory page into the worker. A million path strings would
    be copied into every worker this way; two arrays are never written to.
    """

    def __init__(self, paths: Sequence[str]):
        encoded = [os.fsencode(p) for p in paths]
        self._offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, end = self._offsets[index], self._offsets[index + 1]
        return os.fsdecode(self._blob[start:end].tobytes())


def _walk_once(top: str) -> list[tuple[str, list[str]]]:
    """``(directory, file names)`` under ``top``, following directory symlinks, each real directory once."""
    seen: set[tuple[int, int]] = set()
    found, stack = [], [top]
    while stack:
        path = stack.pop()
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in seen:
            continue  # a loop, or a second way into a directory already listed
        seen.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(path) as entries:
                listing = sorted(entries, key=lambda e: e.name)
        except OSError as err:
            raise DataError(f"cannot list the image folder {path} ({err.strerror or err}): make it readable "
                            f"or move it out of data.root") from None
        # is_dir() follows symlinks, as os.walk(followlinks=True) does; a dangling link counts as a file.
        subdirs = [e.path for e in listing if _is_dir(e)]
        found.append((path, [e.name for e in listing if not _is_dir(e)]))
        stack.extend(reversed(subdirs))  # popped in sorted order: the first way into a directory is kept
    return found


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def scan_folder(root: str) -> tuple[list[str], list[str], list[int]]:
    """``(classes, paths, labels)`` of the images under ``root``/<class>/..., in torchvision's order."""
    with os.scandir(root) as entries:
        classes = sorted(e.name for e in entries if _is_dir(e))
    if not classes:
        raise DataError(f"no class subfolders under {root}: put the images in a subfolder "
                        f"such as {os.path.join(root, 'all')}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        # torchvision sorts os.walk's (dirpath, ...) tuples: directories in path order, files by name.
        for directory, names in sorted(_walk_once(os.path.join(root, name))):
            for file_name in names:
                if file_name.lower().endswith(IMG_EXTENSIONS):
                    paths.append(os.path.join(directory, file_name))
                    labels.append(label)
    return classes, paths, labels


def check_verify(value: object) -> object:
    """``data.verify``: ``auto``, true or false."""
    if not (isinstance(value, bool) or value == "auto"):
        raise ConfigError(f"data.verify must be auto, true or false, got {value!r}")
    return value


def header_error(path: str) -> str | None:
    """Why the image at ``path`` cannot be opened, or ``None`` when its header parses."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()  # parses the header (PNG: every chunk and its checksum) without decoding pixels
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None


def verify_headers(paths: PathTable, root: str, mode: object, threads: int | None = None) -> None:
    """Raise :class:`DataError` naming the first unreadable image; ``mode`` is ``data.verify``."""
    count = len(paths)
    if mode is False or (mode == "auto" and count > VERIFY_AUTO_LIMIT):
        if mode == "auto":
            log.info("data.verify=auto: %d images are more than %d, so their headers are not checked at start "
                     "(data.verify=true checks them)", count, VERIFY_AUTO_LIMIT)
        return
    start = time.perf_counter()
    threads = threads or min(32, 4 * (os.cpu_count() or 1))
    chunks = [range(i, min(i + CHUNK, count)) for i in range(0, count, CHUNK)]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify") as pool:
        found = pool.map(lambda chunk: [(i, header_error(paths[i])) for i in chunk], chunks)
        bad = [(i, err) for chunk in found for i, err in chunk if err is not None]
    if bad:
        (index, reason), more = bad[0], len(bad) - 1
        others = f" and {more} more" if more else ""
        raise DataError(f"unreadable image {paths[index]} ({reason}){others} among the {count} under {root} "
                        f"(data.verify): {replace_hint(len(bad))}")
    log.info("checked the headers of %d images in %.2f s (data.verify)", count, time.perf_counter() - start)
