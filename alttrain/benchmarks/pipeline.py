"""Input-pipeline throughput: alttrain's ``image_folder`` against torchvision's ``ImageFolder`` + ``DataLoader``.

    python scripts/bench.py --workloads data                          # 3000 JPEGs at 64 and 128 px, 2 workers
    python scripts/bench.py --workloads data --data-workers 4 --rounds 3 --data-dir /tmp/bench_jpegs
    python scripts/bench.py --workloads data --device cuda            # pinned batches copied to the GPU

Folders: ``--data-images`` JPEGs per size S, generated with PIL into ``--data-dir`` (kept and reused)
or a temporary dir. Each is a random smooth image (a 6x6 random colour field upsampled bicubically,
plus Gaussian grain) of (5/4 S) x S pixels at JPEG quality 90, so that decoding, resizing and
cropping cost what they cost on photos of that size.

Images/s: both pipelines read the same files with the same worker count, batch size and transforms
(shorter side resized to S, center crop, to tensor, scaled to [-1, 1]), shuffled, last partial batch
dropped; on CUDA both pin memory and copy each batch to the device non-blocking. Each measurement is
a fresh loader: ``--data-warmup`` batches (worker start-up) are skipped, ``--data-batches`` timed.
Rounds alternate which pipeline goes first; the table gives medians over rounds and the median
per-round ratio (target: alttrain >= 0.95x torchvision).

``time/data_wait``: a DCGAN run (the digits experiment's model and loss, the folder as data) with 0
and with ``--data-workers`` workers for ``--data-steps`` steps; the mean of the logged shares after
the first log step (which includes starting the workers).
"""

from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

TARGET = 0.95  # alttrain's images/s as a fraction of torchvision's


def write_jpegs(root: Path, count: int, size: int, seed: int = 0) -> Path:
    """``count`` random smooth (5/4 size) x size JPEGs in ``root``/all (kept if already there)."""
    from PIL import Image

    folder = root / "all"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width = size * 5 // 4
    for i in range(count):
        field = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((width, size), Image.BICUBIC)
        grain = rng.normal(0.0, 12.0, (size, width, 3))
        pixels = np.clip(np.asarray(field, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def _timed_rate(batches: Iterator, batch_size: int, timed: int, warmup: int, device: torch.device) -> float:
    """Images/s over ``timed`` batches after ``warmup`` untimed ones, copied to ``device`` as the trainer does."""
    def pull() -> None:
        samples = next(batches)[0]
        if device.type == "cuda":
            samples.to(device, non_blocking=True)

    for _ in range(warmup):
        pull()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(timed):
        pull()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return timed * batch_size / (time.perf_counter() - start)


def alttrain_rate(root: Path, size: int, workers: int, batch_size: int, timed: int, warmup: int,
                  device: torch.device, seed: int = 0) -> float:
    from alttrain.data import image_folder

    source = image_folder(root, batch_size=batch_size, image_size=size, num_workers=workers, verify=False)
    source.pin_memory = device.type == "cuda"
    stream = source.stream(seed=seed)
    try:
        return _timed_rate(stream, batch_size, timed, warmup, device)
    finally:
        stream.close()


def torchvision_loader(root: Path, size: int, workers: int, batch_size: int, device: torch.device, seed: int = 0):
    """The torchvision way to read the same folder with the same transforms."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.5] * 3)])
    return torch.utils.data.DataLoader(
        datasets.ImageFolder(str(root), transform=transform), batch_size=batch_size, shuffle=True, drop_last=True,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed))


def torchvision_rate(root: Path, size: int, workers: int, batch_size: int, timed: int, warmup: int,
                     device: torch.device, seed: int = 0) -> float:
    loader = torchvision_loader(root, size, workers, batch_size, device, seed)

    def endless():
        while True:
            yield from loader

    batches = endless()
    try:
        return _timed_rate(batches, batch_size, timed, warmup, device)
    finally:
        batches.close()  # its loader's workers end with it


def max_pixel_difference(root: Path, size: int, count: int = 8) -> float:
    """Largest difference between the two pipelines' tensors for the same files (float rounding only)."""
    from alttrain.data import image_folder

    source = image_folder(root, batch_size=1, image_size=size, num_workers=0, verify=False)
    dataset = torchvision_loader(root, size, 0, 1, torch.device("cpu")).dataset
    count = min(count, source.size)
    ours = source.fetch(torch.arange(count))
    theirs = torch.stack([dataset[i][0] for i in range(count)])
    return float((ours - theirs).abs().max())


def dcgan_data_wait(root: Path, size: int, workers: int, batch_size: int, steps: int, device: str,
                    run_dir: Path) -> float:
    """Mean ``time/data_wait`` of a DCGAN run on the folder, after the first log step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from alttrain.benchmarks.quality import compose_run
    from alttrain.run.app import train

    log_every = max(1, min(10, steps // 3))
    cfg = compose_run("digits", 0, [
        "data=image_folder", f"data.root={root}", f"data.image_size={size}", f"data.num_workers={workers}",
        f"data.batch_size={batch_size}",
        "data.verify=false", f"device={device}", f"trainer.max_steps={steps}", f"trainer.log_every={log_every}",
        f"trainer.sample_every={steps}", f"trainer.checkpoint_every={steps}", "metrics.num_samples=16"])
    with contextlib.redirect_stderr(io.StringIO()):
        train(cfg, run_dir)
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    values = [e.value for e in acc.Scalars("time/data_wait") if e.step > 0]
    return statistics.fmean(values) if values else float("nan")


def run_data_bench(images: int, sizes: list[int], workers: int, rounds: int, timed: int, warmup: int,
                   steps: int, batch_size: int, device: str, data_dir: str | None = None) -> list[str]:
    """Measure everything the module docstring lists; returns the report's lines."""
    dev = torch.device(device)
    with contextlib.ExitStack() as stack:
        base = Path(data_dir) if data_dir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jpegs_")))
        lines = [f"data: {images} JPEGs per size, batch {batch_size}, {workers} workers, {timed} timed batches after "
                 f"{warmup}, {rounds} rounds, device {device}", "",
                 "| size | alttrain img/s | torchvision img/s | alttrain / torchvision | max pixel diff | target |",
                 "|---|---|---|---|---|---|"]
        waits = []
        for size in sizes:
            root = write_jpegs(base / f"jpeg{size}", images, size)
            rates: dict[str, list[float]] = {"alttrain": [], "torchvision": []}
            for r in range(rounds):
                order = ("alttrain", "torchvision") if r % 2 == 0 else ("torchvision", "alttrain")
                for impl in order:
                    fn = alttrain_rate if impl == "alttrain" else torchvision_rate
                    rates[impl].append(fn(root, size, workers, batch_size, timed, warmup, dev, seed=r))
            ratio = statistics.median(a / b for a, b in zip(rates["alttrain"], rates["torchvision"]))
            verdict = "met" if ratio >= TARGET else "MISSED"
            lines.append(f"| {size} | {statistics.median(rates['alttrain']):.0f} | "
                         f"{statistics.median(rates['torchvision']):.0f} | {ratio:.3f}x | "
                         f"{max_pixel_difference(root, size):.2g} | >= {TARGET}x: {verdict} |")
            for w in sorted({0, workers}):
                run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="data_wait_")))
                wait = dcgan_data_wait(root, size, w, batch_size, steps, device, run_dir)
                waits.append(f"| {size} | {w} | {wait:.3f} |")
        return lines + ["", f"DCGAN, {steps} steps: time/data_wait (share of each step spent waiting for data)", "",
                        "| size | workers | time/data_wait |", "|---|---|---|", *waits]
