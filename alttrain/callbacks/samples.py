"""Sample pictures during training: the same latent batch every time, so frames compare across steps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from alttrain import render
from alttrain.checks import check_int
from alttrain.engine.batch import LatentPrior
from alttrain.engine.hooks import Callback
from alttrain.errors import ConfigError
from alttrain.metrics.evaluate import class_rows

KINDS = ("images", "points")
DEFAULT_NUM = {"images": 64, "points": 1000}


class SampleCallback(Callback):
    """Every ``every`` completed steps and at train end, draws ``generator_fn()`` on a fixed noise batch.

    Writes ``<out_dir>/step_XXXXXXXX.png`` (``XXXXXXXX`` = completed steps), a copy of the last one
    as ``final.png``, and sends each picture to ``logger.add_image("samples", ...)`` when given.
    A ``conditional`` generator of ``num_classes`` classes draws one row of ``per_class`` samples
    per class.

    ``kind="images"``: a grid of ``(N, C, H, W)`` samples in ``[-1, 1]``. ``kind="points"``: a
    scatter of ``(N, 2)`` samples over ``reference`` points and mode ``centers`` inside ``extent``
    (default: fitted once to the reference and centres, else to the first samples, then kept).

    Training is bit-identical with or without this callback: the noise comes from a private
    ``torch.Generator``, and the global CPU/CUDA RNG states are restored after sampling, in case the
    generator itself draws random numbers (noise inputs).
    """

    def __init__(self, out_dir: str | Path, every: int, generator_fn: Callable[[], nn.Module], prior: LatentPrior,
                 kind: str, num: int | None = None, seed: int = 1234, logger=None,
                 reference: torch.Tensor | None = None, centers: torch.Tensor | None = None,
                 extent: render.Extent | None = None, size: int = 512, nrow: int | None = None,
                 conditional: bool = False, per_class: int = 8):
        if kind not in KINDS:
            raise ConfigError(f"samples.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        check_int("trainer.sample_every", every, 0)
        self.out_dir, self.every, self.generator_fn, self.kind = Path(out_dir), every, generator_fn, kind
        self.labels = None
        if conditional:
            self.labels = class_rows(prior.num_classes, per_class)
            num, nrow = len(self.labels), per_class
        self.num = num if num is not None else DEFAULT_NUM[kind]
        self.logger, self.reference, self.centers, self.size = logger, reference, centers, size
        self.nrow = nrow or render.grid_rows(self.num)
        if extent is None and (reference is not None or centers is not None):
            extent = render.auto_extent(reference, centers)
        self.extent = extent
        self.noise = prior.latent(self.num, generator=torch.Generator().manual_seed(seed))
        self.last_step: int | None = None
        self.last_image: torch.Tensor | None = None

    def on_step_end(self, trainer) -> None:
        step = trainer.state.step
        if self.every and step % self.every == 0:
            self.write(step)

    def on_train_end(self, trainer) -> None:
        if self.last_step != trainer.state.step:
            self.write(trainer.state.step)
        render.save_png(self.last_image, self.out_dir / "final.png")

    def write(self, step: int) -> torch.Tensor:
        """Render, save ``step_XXXXXXXX.png`` and log the picture; returns it (``uint8`` CHW)."""
        image = self.render()
        render.save_png(image, self.out_dir / f"step_{step:08d}.png")
        if self.logger is not None:
            self.logger.add_image("samples", image, step)
        self.last_step, self.last_image = step, image
        return image

    def render(self) -> torch.Tensor:
        samples = self.sample()
        if self.kind == "images":
            if samples.dim() != 4:
                raise ConfigError(f"samples.kind=images needs (N, C, H, W) generator output, got shape "
                                  f"{tuple(samples.shape)}; use kind=points for 2-D data")
            return render.image_grid(samples, nrow=self.nrow)
        if samples.dim() != 2 or samples.shape[1] != 2:
            raise ConfigError(f"samples.kind=points needs (N, 2) generator output, got shape "
                              f"{tuple(samples.shape)}; use kind=images for image data")
        if self.extent is None:
            self.extent = render.auto_extent(samples)  # fixed from now on, so frames stay comparable
        return render.scatter_plot(samples, self.reference, self.centers, size=self.size, extent=self.extent)

    def sample(self) -> torch.Tensor:
        """Generator output for the fixed noise, in eval mode without gradients, on the CPU."""
        module = self.generator_fn()
        device = _device_of(module)
        flags = [(m, m.training) for m in module.modules()]  # submodules may differ from the root
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        try:
            module.eval()
            with torch.random.fork_rng(devices=cuda), torch.no_grad():
                if self.labels is not None:
                    return module(self.noise.to(device), self.labels.to(device)).float().cpu()
                return module(self.noise.to(device)).float().cpu()
        finally:
            for m, training in flags:
                m.training = training


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
