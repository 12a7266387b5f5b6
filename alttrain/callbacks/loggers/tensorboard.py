"""TensorBoard: scalars, images, text and HParams in one event file per run, in the run dir itself.

On resume from step ``S`` the writer purges what a crashed run wrote past its checkpoint (TensorBoard's
``purge_step``), keeping ``S`` itself: metrics and samples at ``S`` were written before that checkpoint.

At start it also writes a Custom Scalars layout (:data:`LAYOUT`), so TensorBoard's CUSTOM SCALARS tab
shows on one screen what a GAN run is judged by: every phase's loss, D's scores on real data and on
fakes, the gradient norms and the learning rates, each as one multi-line chart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from alttrain.callbacks.loggers.base import HParamValue, Logger
from alttrain.checks import check_bool

# {category: {chart title: ["Multiline", [tag regexes]]}}: the form SummaryWriter.add_custom_scalars takes.
# The regexes follow the trainer's slash-grouped names, so a new phase (loss/R1) or param group joins its chart.
LAYOUT = {"alttrain": {
    "losses (loss/<phase>)": ["Multiline", [r"^loss/"]],
    "D scores (score/real, score/fake, score/fake_for_G)": ["Multiline", [r"^score/"]],
    "gradient norms (grad_norm/<network>/<group>)": ["Multiline", [r"^grad_norm/"]],
    "learning rates (lr/<network>/<group>)": ["Multiline", [r"^lr/"]],
}}


class TensorBoard(Logger):
    """Writes one TensorBoard run into ``log_dir`` (a single directory, no per-run subfolders).

    ``custom_scalars``: write :data:`LAYOUT` at start (the CUSTOM SCALARS tab).
    """

    def __init__(self, log_dir: str | Path, custom_scalars: bool = True):
        self.log_dir = Path(log_dir)
        self.custom_scalars = check_bool("logger.tensorboard.custom_scalars", custom_scalars)
        self._writer = None
        self._purge_step: int | None = None

    @property
    def writer(self):
        """The ``SummaryWriter``, opened on first use."""
        if self._writer is None:
            from torch.utils.tensorboard import (
                SummaryWriter,  # imports tensorboard: keep it off import time
            )

            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self._purge_step)
        return self._writer

    def start(self, start_step: int) -> None:
        self._purge_step = start_step + 1 if start_step else None
        if self.custom_scalars:
            # Written again on resume (into the new event file): TensorBoard reads the latest layout.
            self.writer.add_custom_scalars(LAYOUT)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        # One event holding every value of the step, which TensorBoard reads as one point per tag:
        # add_scalar would build and queue an event per value (1.2 ms for 15 values, against 0.11 ms).
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=name, simple_value=float(value)) for name, value in scalars.items()]
        if values:
            self.writer.file_writer.add_summary(Summary(value=values), step)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="CHW")

    def log_text(self, tag: str, text: str, step: int) -> None:
        # TensorBoard renders text as Markdown: a code block keeps YAML's indentation and symbols as written.
        self.writer.add_text(tag, code_block(text), global_step=step)

    def log_hparams(self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], step: int) -> None:
        # SummaryWriter.add_hparams opens a second writer in a subfolder (a timestamp by default), which
        # TensorBoard shows as a separate run. Writing the same summaries here keeps one run, one folder.
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        for summary in hparams_summaries(dict(hparams), dict(metrics)):
            self.writer.file_writer.add_summary(summary, step)
        self.log_scalars(metrics, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def code_block(body: str) -> str:
    """``body`` as a Markdown code block."""
    # A fence longer than any backtick run in the text, so YAML holding ``` cannot end it early.
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{body}\n{fence}"
