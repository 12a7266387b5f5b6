"""Train a GAN by alternating phases, configured with Hydra.

    python scripts/train.py                                 # DCGAN on the built-in digits, about 2 min on CPU
    python scripts/train.py experiment=ring8 loss=hinge     # 8 Gaussians, hinge loss
    python scripts/train.py -m loss=ns,hinge seed=0,1       # a sweep: four runs
    python scripts/train.py debug=default                   # any run shrunk to seconds
    python scripts/train.py resume=outputs/2026-11-24/10-00-00 trainer.max_steps=3000
    torchrun --standalone --nproc_per_node=2 scripts/train.py experiment=ring8   # data-parallel, 2 processes

Runs land in outputs/<date>/<time>/ (hydra.run.dir=... moves them); watch them with
``tensorboard --logdir outputs``.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from alttrain import distributed
from alttrain.app import train
from alttrain.cli import report_user_errors


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    metrics = report_user_errors(train, cfg, hydra_cfg.runtime.output_dir, hydra_cfg.overrides.task)
    return metrics.get("fid", metrics.get("modes")) if metrics else None  # the value a sweeper optimises


if __name__ == "__main__":
    # Under torchrun: join the process group before Hydra resolves ${now:}, so every rank names
    # the same run dir (rank 0's clock).
    distributed.setup()
    try:
        main()
    finally:
        distributed.teardown()
