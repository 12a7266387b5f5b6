"""The ``alttrain`` command and ``scripts/*.py``: one entry per job, and every failure said in one line.

    alttrain train experiment=ring8                 # = python scripts/train.py experiment=ring8
    alttrain sample checkpoint=outputs/<run> out=grid.png
    alttrain demo scope                             # the TensorFlow 1 demo, one of none | trainable | var_list | scope

``train`` is a Hydra application whose configs travel inside the package (``pkg://alttrain.conf``, the
repository's ``conf/``); ``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]`` adds a user's own
experiments, models and data on top. Hydra's own failures (a YAML syntax error, an override of a key that
does not exist, a run dir that is a file) happen before alttrain's code runs; they are caught here too and
printed as one ``error:`` line with exit code 2. ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from alttrain.errors import AltTrainError, NonFiniteError
from alttrain.run.cli import (
    EXIT_USER_ERROR,
    os_error_line,
    quiet_thread_os_errors,
    report_user_errors,
    say,
)
from alttrain.run.objective import (
    check_objective,
    check_sweeper_direction,
    objective_value,
)

CONFIG_PATH = "pkg://alttrain.conf"
USAGE = ("usage: alttrain {train,sample,evaluate,demo} [arguments]\n"
         "  train     train a run: alttrain train [group=option ...] [key=value ...] (Hydra overrides)\n"
         "  sample    samples from a checkpoint: alttrain sample checkpoint=<run dir or .pt> out=<grid.png|x.pt>\n"
         "  evaluate  score a checkpoint or a folder of images: alttrain evaluate checkpoint=<run dir> ...\n"
         "  demo      the TensorFlow 1 variable-freezing demo: alttrain demo {none,trainable,var_list,scope}")


def train_main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Run the Hydra training application on ``argv`` (default: ``sys.argv[1:]``)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from alttrain.run.app import train
    from alttrain.scale import processes

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
    def hydra_app(cfg) -> float | None:
        hydra_cfg = HydraConfig.get()
        sweeper = hydra_cfg.get("sweeper") if hydra_cfg.mode == RunMode.MULTIRUN else None
        objective = (cfg.get("metrics") or {}).get("objective", "auto")
        report_user_errors(check_objective_config, objective, sweeper)
        diverged = False
        try:
            metrics = report_user_errors(train, cfg, hydra_cfg.runtime.output_dir, hydra_cfg.overrides.task,
                                         _raise=(NonFiniteError,) if sweeper is not None else ())
        except NonFiniteError as exc:  # one diverged trial of a sweep: a bad value, and the sweep goes on
            say(f"warning: this trial diverged ({exc}); it reports the worst value")
            metrics, diverged = {}, True
        return objective_value(metrics, objective, diverged, (sweeper or {}).get("direction"))

    # Under torchrun: join the process group before Hydra resolves ${now:}, so every rank names the
    # same run dir (rank 0's clock).
    processes.setup()
    quiet_thread_os_errors()
    clean = False
    try:
        with _argv([prog or sys.argv[0], *(sys.argv[1:] if argv is None else argv)]):
            _hydra_errors_in_one_line(hydra_app)
        clean = True
    except SystemExit as exc:
        # A graceful stop (128 + signal) ends every rank at one agreed step: as clean as a finished run.
        clean = isinstance(exc.code, int) and exc.code >= 128
        raise
    finally:
        processes.teardown(clean)


def check_objective_config(objective: str, sweeper) -> None:
    check_objective(objective)
    check_sweeper_direction(objective, sweeper)


def _hydra_errors_in_one_line(app: Callable[[], None]) -> None:
    """Call the Hydra app with Hydra re-raising its errors, and turn the ones a user caused into one line."""
    wanted = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises instead of printing a trimmed traceback
    os.environ["ALTTRAIN_FULL_ERROR"] = "1" if wanted else "0"  # what report_user_errors honours
    try:
        app()
    except (AltTrainError, OSError, ValueError) + _hydra_error_types() as exc:
        message = user_error_line(exc)
        if wanted or message is None:
            raise
        say(f"error: {message}")
        raise SystemExit(EXIT_USER_ERROR) from None
    finally:
        if not wanted:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def _hydra_error_types() -> tuple[type, ...]:
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (HydraException, OmegaConfBaseException, yaml.YAMLError)


def user_error_line(exc: BaseException) -> str | None:
    """One line for an error the user's input or environment caused, or None for a bug."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    cause = exc
    while cause.__cause__ is not None and not isinstance(cause, yaml.YAMLError):
        cause = cause.__cause__  # Hydra wraps the YAML parser's error
    if isinstance(cause, yaml.YAMLError):
        return _yaml_line(cause)
    if isinstance(exc, (HydraException, OmegaConfBaseException, AltTrainError)):
        # Hydra's messages span lines (the options of a group, its search path): keep what helps.
        lines = [line.strip() for line in str(exc).split("Config search path:")[0].splitlines() if line.strip()]
        return _join(lines) or type(exc).__name__
    if isinstance(exc, OSError):
        return os_error_line(exc)
    return None


def _join(lines: list[str]) -> str:
    """Lines as one: after a sentence or a heading a space, between items a comma."""
    out = ""
    for line in lines:
        out += line if not out else (" " if out[-1] in ".:" else ", ") + line
    return out


def _yaml_line(err) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "a config file"
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    return f"YAML syntax error in {where}: {f'{context}: ' if context else ''}{problem}; fix that file"


class _argv:
    """Hydra reads ``sys.argv``: set it for the call, put it back after."""

    def __init__(self, argv: list[str]):
        self.argv, self.saved = argv, None

    def __enter__(self):
        self.saved, sys.argv = sys.argv, self.argv

    def __exit__(self, *exc_info):
        sys.argv = self.saved


def main(argv: Sequence[str] | None = None) -> None:
    """``alttrain <command> ...``.

    As ``python -m`` does, the current directory comes first on the import path, so the models, losses
    and callbacks of the project you run it in load by ``_target_`` without PYTHONPATH.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if args else EXIT_USER_ERROR)
    command, rest = args[0], args[1:]
    if command == "train":
        train_main(rest, prog="alttrain train")
    elif command == "sample":
        from alttrain.run.sample import main as sample

        report_user_errors(sample, rest)
    elif command == "evaluate":
        from alttrain.run.evaluate import main as evaluate

        report_user_errors(evaluate, rest)
    elif command == "demo":
        from alttrain.run.demo import main as demo

        with _argv(["alttrain demo", *rest]):
            demo(rest)
    else:
        say(f"error: unknown command {command!r}\n{USAGE}")
        raise SystemExit(EXIT_USER_ERROR)
