"""Entry-point glue: a user error becomes one line on stderr and exit code 2, not a traceback."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from alttrain.errors import AltTrainError

EXIT_USER_ERROR = 2


def report_user_errors(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; on :class:`AltTrainError` print ``error: <message>`` and exit 2.

    ``HYDRA_FULL_ERROR=1`` lets the exception through with its traceback, as Hydra does.
    """
    try:
        return fn(*args, **kwargs)
    except AltTrainError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
