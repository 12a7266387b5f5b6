"""Data-parallel training: two gloo processes on the CPU, through the same entry the CLI uses.

One module-scoped spawn (``torch.multiprocessing.spawn``) starts a real process group and runs
``alttrain.run.app.train`` on both ranks: fresh, then resumed. ``ALTTRAIN_SLOW_TESTS=1`` also runs
``torchrun`` of ``scripts/train.py``. Everything else runs in-process.
"""

import copy
import functools
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import RING8, ROOT, SCRIPTS, compose_config
from hydra.core.utils import setup_globals
from omegaconf import OmegaConf
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from alttrain.data import ring8
from alttrain.engine.network import build_network
from alttrain.engine.phase import Phase
from alttrain.engine.trainer import Trainer
from alttrain.engine.views import zero_tie
from alttrain.errors import ConfigError
from alttrain.games import losses
from alttrain.games.terms import GeneratorLoss
from alttrain.models import MLPDiscriminator, MLPGenerator
from alttrain.models.dcgan import DCGANDiscriminator
from alttrain.persist.checkpoint import load_checkpoint
from alttrain.scale import distributed, processes
from alttrain.scale.distributed import (
    ReplicaDivergence,
    Replicas,
    fingerprint,
    replica_tensors,
)
from alttrain.scale.processes import DistContext

WORLD = 2
# 4 steps of ring8 with small MLPs: D accumulates 2 micro-batches, a lazy R1 phase every 2 steps
# (an input-gradient penalty, which leaves D's output bias without a gradient), an EMA generator.
RUN = (*RING8, "debug=default", "model.hidden_dim=16", "data.batch_size=64", "trainer.max_steps=4",
       "trainer.checkpoint_every=2", "trainer.log_every=2", "trainer.sample_every=0", "metrics.num_samples=200",
       "trainer.progress=never", "+trainer.phases.D.accumulate=2", "trainer.ema.half_life_samples=500",
       "+trainer.phases.R1={network: discriminator, loss: r1, every: 2, weight: 2}")


# The three-network experiment, shrunk.
BIGAN = ("experiment=bigan_ring8", "debug=default", "model.hidden_dim=16", "data.batch_size=64", "trainer.max_steps=4",
         "trainer.checkpoint_every=2", "trainer.log_every=2", "trainer.sample_every=0", "metrics.num_samples=200",
         "trainer.progress=never", "trainer.phases.R1.every=2", "trainer.phases.R1.weight=2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, out: Path) -> None:
    """One of two ranks: the agreement primitives, then ``alttrain.run.app.train`` twice (4 steps; a resume from 2)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = processes.setup()  # as scripts/train.py does before Hydra starts
    try:
        assert (ctx.rank, ctx.world_size, ctx.is_main) == (rank, WORLD, rank == 0)
        assert processes.setup() == ctx  # idempotent: app.train calls it again
        _check_agreement(ctx, out)
        _train_twice(rank, out)
    finally:
        processes.teardown()


def _check_agreement(ctx: DistContext, out: Path) -> None:
    rank = ctx.rank
    setup_globals()  # Hydra re-registers its ${now:} resolver at every launch
    time.sleep(0.01 * rank)
    stamp = OmegaConf.create({"dir": "${now:%H-%M-%S-%f}"}).dir
    assert len(set(processes.all_gather_bytes(stamp.encode()))) == 1  # rank 0's clock everywhere
    assert processes.agree_run_dir(out / f"clock-{rank}") == out / "clock-0"
    replicas = Replicas(ctx, torch.device("cpu"))
    assert replicas.any(rank == 1) and not replicas.any(False)
    bn = nn.BatchNorm1d(3)
    bn.running_mean.fill_(rank)  # statistics drift apart per data shard
    states = replicas.sync([bn], [("w", torch.arange(6.0)), ("bn.running_mean", bn.running_mean)])
    assert torch.equal(bn.running_mean, torch.zeros(3))  # rank 0's, on every rank
    assert len(states) == WORLD and torch.equal(states[rank]["torch"], torch.get_rng_state())
    w = torch.arange(6.0)
    if rank == 1:
        w[4] = torch.nextafter(w[4], torch.tensor(10.0))  # one ulp on one element of one rank
    with pytest.raises(ReplicaDivergence, match=r"rank\(s\) 1 hold .* 1 tensor\(s\), first w\b"):
        replicas.check_identical([("w", w), ("step", torch.tensor(3))])
    (out / f"agreement-rank{rank}.ok").touch()


def _train_twice(rank: int, out: Path) -> None:
    """After each run, dump this rank's replica tensors and how often each DDP wrapper all-reduced."""
    from alttrain.run.app import train

    fit, runs = Trainer.fit, []

    def counting_fit(self):
        reductions, hooked = {}, set()
        for phase, wrappers in self.views.ddp.items():
            trained = next(p.networks for p in self.phases if p.name == phase)
            for network, wrapper in zip([n.name for n in trained], wrappers):
                if id(wrapper) not in hooked:  # one hook per wrapper: R1 shares D's
                    hooked.add(id(wrapper))
                    key = phase if len(wrappers) == 1 else f"{phase}.{network}"
                    reductions[key] = 0
                    wrapper.register_comm_hook((reductions, key), counting_hook)
        state = fit(self)
        torch.save({"tensors": dict(replica_tensors(self.networks, self.ema)), "reductions": reductions},
                   out / f"{runs[-1]}-rank{rank}.pt")
        return state

    def counting_hook(where, bucket):
        if bucket.is_last():  # one count per all-reduced backward, whatever the bucket count
            where[0][where[1]] += 1
        return allreduce_hook(None, bucket)

    Trainer.fit = counting_fit
    # Each rank passes its own run dir, as ranks with different ${now:} would: rank 0's must win.
    runs.append("first")
    train(compose_config(*RUN), out / f"first{rank}")
    dist.barrier()  # rank 0 has written its last checkpoint
    runs.append("resumed")
    train(compose_config(*RUN, f"resume={out / 'first0' / 'checkpoints' / 'step_00000002.pt'}"), out / f"resumed{rank}")
    dist.barrier()
    runs.append("bigan")  # three networks, a phase that trains two of them, a lazy R1 phase
    train(compose_config(*BIGAN), out / f"bigan{rank}")
    dist.barrier()
    runs.append("reuse")  # one G forward per step (D without accumulation), its graph through G's DDP wrapper
    train(compose_config(*[o for o in RUN if "accumulate" not in o], "trainer.reuse_fakes=true"), out / f"reuse{rank}")


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank_main, args=(free_port(), out), nprocs=WORLD)
    dumps = {run: [torch.load(out / f"{run}-rank{r}.pt", weights_only=True) for r in range(WORLD)]
             for run in ("first", "resumed", "bigan", "reuse")}
    return out, dumps


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_setup_shares_rank_zeros_clock_and_agreement_catches_one_ulp_on_every_rank(two_rank_run):
    out, _ = two_rank_run  # the checks ran inside both ranks (_check_agreement); each left a mark
    assert sorted(p.name for p in out.glob("agreement-rank*.ok")) == ["agreement-rank0.ok", "agreement-rank1.ok"]


def test_two_processes_hold_identical_replicas_and_sync_once_per_update(two_rank_run):
    out, dumps = two_rank_run
    ranks = dumps["first"]
    assert_identical(ranks[0]["tensors"], ranks[1]["tensors"])
    assert any(k.startswith("ema.") for k in ranks[0]["tensors"])
    assert any("optimizer state" in k for k in ranks[0]["tensors"])
    # 4 steps: D 4 updates of 2 micro-batches each, R1 2 updates, G 4: one all-reduce per update.
    # Syncing every micro-batch would make D's wrapper reduce 4 * 2 + 2 = 10 times.
    assert ranks[0]["reductions"] == ranks[1]["reductions"] == {"D": 4 + 2, "G": 4}


def test_three_networks_on_two_processes_stay_identical_with_one_reduce_per_network_update(two_rank_run):
    out, dumps = two_rank_run
    ranks = dumps["bigan"]
    assert_identical(ranks[0]["tensors"], ranks[1]["tensors"])
    names = {k.split(".")[0] for k in ranks[0]["tensors"]}
    assert {"generator", "encoder", "discriminator"} <= names
    # D: 4 updates + 2 R1 updates on one wrapper; EG: 4 updates, each of its two networks all-reduced once.
    assert ranks[0]["reductions"] == {"D": 4 + 2, "EG.generator": 4, "EG.encoder": 4}
    ckpt = load_checkpoint(out / "bigan0" / "checkpoints" / "last.pt")
    assert ckpt["trainer"]["phase_updates"] == {"D": 4, "EG": 4, "R1": 2}


def test_reused_fakes_on_two_processes_stay_identical(two_rank_run):
    _, dumps = two_rank_run
    ranks = dumps["reuse"]
    assert_identical(ranks[0]["tensors"], ranks[1]["tensors"])
    assert ranks[0]["reductions"] == {"D": 4 + 2, "G": 4}  # still one all-reduce per update


def test_rank_zero_writes_the_only_run_dir_and_counts_global_samples(two_rank_run):
    out, _ = two_rank_run
    run = out / "first0"
    assert not (out / "first1").exists() and not (out / "resumed1").exists()
    for path in (".hydra/config.yaml", "checkpoints/last.pt", "checkpoints/step_00000002.pt", "metrics.json"):
        assert (run / path).is_file(), path
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["trainer"]["phase_updates"] == {"D": 4, "G": 4, "R1": 2}
    # Real samples, both ranks: D 4 updates x 2 micro-batches x 64 x 2 ranks, R1 2 x 64 x 2.
    assert ckpt["trainer"]["samples"] == 4 * 2 * 64 * 2 + 2 * 64 * 2
    assert ckpt["ema"]["samples"] == 4 * 64 * 2  # G updates x batch x ranks
    # Every rank's RNG state travels (rank 0's is also "rng"); the ranks draw different latents.
    rng = ckpt["rng_ranks"]
    assert len(rng) == WORLD and torch.equal(rng[0]["torch"], ckpt["rng"]["torch"])
    assert not torch.equal(rng[0]["torch"], rng[1]["torch"])


def test_resume_on_two_processes_continues_bit_exactly(two_rank_run):
    out, dumps = two_rank_run
    resumed = dumps["resumed"]
    for rank in range(WORLD):
        assert_identical(resumed[rank]["tensors"], dumps["first"][rank]["tensors"])
    assert resumed[0]["reductions"] == {"D": 2 + 1, "G": 2}  # steps 2 and 3 only


@pytest.mark.skipif(os.environ.get("ALTTRAIN_SLOW_TESTS") != "1", reason="two more processes importing torch: slow")
def test_torchrun_of_the_script_makes_one_time_stamped_run_dir(tmp_path):
    """The CLI path: setup() before Hydra, DDP over compiled modules, one run dir named by rank 0's clock."""
    # %f: ranks reading their own clocks would differ by microseconds and make two dirs.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
                           str(SCRIPTS / "train.py"), *RUN, "trainer.compile=aot_eager",
                           f"hydra.run.dir={tmp_path}/" + "${now:%H-%M-%S-%f}"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = tmp_path.iterdir()
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "metrics.json").is_file()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["trainer"]["step"] == 4


def test_torchrun_on_the_digits_evaluates_and_finishes(tmp_path):
    """Rank 0 alone computes FID/KID, at eval_every and at the end; the metrics must not wait for rank 1.

    torchmetrics' default sync_on_compute=True gathers across ranks inside compute(): rank 1, which
    never calls it, left rank 0 deadlocked (periodic evaluation) or crashed it at the end.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
                           str(SCRIPTS / "train.py"), "debug=default", "trainer.max_steps=25",
                           "trainer.checkpoint_every=10", "metrics.eval_every=10", "trainer.progress=never",
                           "metrics.num_samples=64", f"hydra.run.dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["step"] == 25 and [h["step"] for h in record["history"]] == [10, 20, 25]
    assert all(math.isfinite(h["fid"]) for h in record["history"])
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["trainer"]["step"] == 25


# -- in one process -------------------------------------------------------------------------------

def test_without_torchrun_there_is_one_rank_and_no_replicas(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert processes.setup() == DistContext() and not dist.is_initialized()
    assert processes.agree_run_dir(tmp_path) == tmp_path
    assert distributed.make_replicas(torch.device("cpu"), sync_batchnorm=True) is None


def test_replica_options_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="sync_batchnorm=true needs CUDA"):
        Replicas(DistContext(0, 2, 0), torch.device("cpu"), sync_batchnorm=True)
    with pytest.raises(ConfigError, match="cuda:LOCAL_RANK, but device=cuda:0"):
        Replicas(DistContext(1, 2, 1), torch.device("cuda:0"))


def test_sync_batchnorm_swaps_layers_but_keeps_every_parameter_and_buffer():
    D = DCGANDiscriminator(image_size=32, channels=1, base_width=8, norm="batch")
    params, buffers = list(D.parameters()), list(D.buffers())
    Replicas(DistContext(0, 2, 0), torch.device("cuda"), sync_batchnorm=True).prepare(D)  # no CUDA call made
    kinds = {type(m) for m in D.modules()}
    assert nn.SyncBatchNorm in kinds and nn.BatchNorm2d not in kinds
    assert all(a is b for a, b in zip(params, D.parameters())) and len(params) == len(list(D.parameters()))
    assert all(a is b for a, b in zip(buffers, D.buffers()))


def test_fingerprint_sees_one_ulp_and_a_swap():
    x = torch.randn(5)
    base = fingerprint([x])
    bumped, swapped = x.clone(), x.clone()
    bumped[3] = torch.nextafter(x[3], torch.tensor(9.0))
    swapped[[0, 1]] = x[[1, 0]]
    assert torch.equal(fingerprint([x.clone()]), base)
    assert not torch.equal(fingerprint([bumped]), base)
    assert fingerprint([swapped])[0, 0] == base[0, 0] and not torch.equal(fingerprint([swapped]), base)


def test_zero_tie_gives_every_parameter_a_zero_gradient():
    D = MLPDiscriminator(hidden_dim=4, depth=1)
    x = torch.randn(3, 2, requires_grad=True)
    penalty = losses.r1_penalty(D, x)
    (penalty + zero_tie(list(D.parameters()))).backward()
    assert all(p.grad is not None for p in D.parameters())
    # D's output bias cannot change an input gradient, so its gradient is exactly zero.
    assert torch.equal(D.head.bias.grad, torch.zeros(1))


class Probe:
    """A D loss on real data only that keeps the micro-batches it saw."""

    needs_real = True

    def __init__(self):
        self.seen = []

    def __call__(self, game, batch):
        self.seen.append(batch.samples)
        return game.score("discriminator", batch.samples).square().mean(), {}


def test_accumulation_averages_micro_batch_gradients_and_counts_one_update():
    torch.manual_seed(0)
    G, D = MLPGenerator(hidden_dim=8, depth=1), MLPDiscriminator(hidden_dim=8, depth=1)
    D0 = copy.deepcopy(D)
    sgd = functools.partial(torch.optim.SGD, lr=1.0)
    g = build_network("generator", G, [{"name": "all", "params": ["*"]}], sgd)
    d = build_network("discriminator", D, [{"name": "all", "params": ["*"]}], sgd)
    probe = Probe()
    phases = [Phase("D", d, probe, accumulate=3), Phase("G", g, GeneratorLoss(losses.g_nonsaturating), every=5)]
    state = Trainer([g, d], phases, ring8(batch_size=32).stream(seed=0), max_steps=1).fit()
    assert state.phase_updates == {"D": 1, "G": 1} and state.samples == 3 * 32
    # By hand: the mean over micro-batches of each one's gradient, then one SGD step of lr 1.
    for real in probe.seen:
        (D0(real).square().mean() * (1.0 / 3)).backward()
    torch.optim.SGD(D0.parameters(), lr=1.0).step()
    assert all(torch.equal(a, b) for a, b in zip(D.parameters(), D0.parameters()))
