"""Entry-point glue: a user error becomes one line on stderr and exit code 2, not a traceback.

Exit codes of the commands: 0 done; 2 bad input or an unusable file (one ``error: ...`` line);
128 + the signal's number for a run stopped by a signal at a step boundary, its checkpoint written
(130 SIGINT, 138 SIGUSR1, 143 SIGTERM; one ``stopped ...`` line with the command that continues it);
1 for anything else (a bug: its traceback is printed).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alttrain.errors import AltTrainError
from alttrain.run.signals import exit_code

EXIT_USER_ERROR = 2


class Stopped(AltTrainError):
    """A run that stopped when asked (a signal), after writing its checkpoint."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code(signum)


def say(line: str) -> None:
    """Write one line to stderr in a single write, so the lines of several ranks never interleave.

    ``print`` writes the text and its newline separately; with unbuffered stderr (``PYTHONUNBUFFERED``, as
    schedulers and torchrun's log redirection often set) two processes sharing the stream then splice their
    lines together. One ``write`` of a line shorter than the pipe buffer is atomic.
    """
    stream = sys.stderr
    stream.write(line + "\n")
    stream.flush()


def report_user_errors(fn: Callable[..., Any], *args: Any, _raise: tuple[type, ...] = (), **kwargs: Any) -> Any:
    """Call ``fn``; on :class:`AltTrainError` print one line and exit (2, or a stopped run's code).

    ``HYDRA_FULL_ERROR=1`` lets the exception through with its traceback, as Hydra does. Under torchrun
    only rank 0 prints a stop line; every rank exits with its code. Errors of the types in ``_raise``
    pass through for the caller to handle.
    """
    try:
        return fn(*args, **kwargs)
    except _raise:
        raise
    except Stopped as exc:
        if os.environ.get("RANK", "0") == "0":
            say(str(exc))
        raise SystemExit(exc.exit_code) from None
    except (AltTrainError, OSError) as exc:
        if tracebacks_wanted():
            raise
        message = str(exc) if isinstance(exc, AltTrainError) else os_error_line(exc)
        say(f"error: {message}")
        raise SystemExit(EXIT_USER_ERROR) from None


def os_error_line(exc: OSError) -> str:
    """One line for what the operating system refused (a full disk, a read-only or missing path)."""
    where = f" {exc.filename}" if exc.filename else ""
    if isinstance(exc, FileExistsError):
        return f"cannot create the directory{where}: a file of that name is in the way; choose another hydra.run.dir"
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{what}{':' + where if where else ''}; check the disk's free space and that the path exists and is writable"


def quiet_thread_os_errors() -> None:
    """A background writer (TensorBoard's event thread) that hits a full disk says so in one line, no traceback."""
    import threading

    default = threading.excepthook

    def hook(args):
        if isinstance(args.exc_value, OSError) and not tracebacks_wanted():
            say(f"error: in the background writer {args.thread.name if args.thread else ''}: "
                f"{os_error_line(args.exc_value)}")
            return
        default(args)

    threading.excepthook = hook


def tracebacks_wanted() -> bool:
    """``HYDRA_FULL_ERROR=1`` as the user set it (the train entry sets it for Hydra and keeps the user's here)."""
    return os.environ.get("ALTTRAIN_FULL_ERROR", os.environ.get("HYDRA_FULL_ERROR")) == "1"


def continue_command(run_dir: Path) -> str:
    """The command line that continues this run: the same arguments, its run dir, ``resume=auto``."""
    keep = [a for a in sys.argv[1:] if not a.startswith(("resume=", "hydra.run.dir="))]
    program = sys.argv[0]
    if os.environ.get("WORLD_SIZE", "1") != "1":
        head = ["torchrun", "<the same torchrun options>", program]
    elif program.endswith(".py"):
        head = ["python", program]
    else:
        head = [Path(program).name]
    return shlex.join([*head, *keep, f"hydra.run.dir={run_dir}", "resume=auto"])
