"""Train networks by alternating phases, configured with Hydra.

    python scripts/train.py                                 # DCGAN on the built-in digits, about 2 min on CPU
    python scripts/train.py experiment=ring8 loss=hinge     # 8 Gaussians, hinge loss
    python scripts/train.py -m loss=ns,hinge seed=0,1       # a sweep: four runs
    python scripts/train.py debug=default                   # any run shrunk to seconds
    python scripts/train.py resume=outputs/2026-11-24/10-00-00 trainer.max_steps=3000
    python scripts/train.py hydra.run.dir=outputs/job42 resume=auto       # continue if there is a checkpoint
    torchrun --standalone --nproc_per_node=2 scripts/train.py experiment=ring8   # data-parallel, 2 processes

The same as ``alttrain train ...`` (alttrain/run/entry.py). Runs land in outputs/<date>/<time>/
(hydra.run.dir=... moves them); watch them with ``tensorboard --logdir outputs``.
"""

from alttrain.run.entry import train_main

if __name__ == "__main__":
    train_main()
