"""The benchmark compares like with like: the three implementations compute the same thing.

Timings are never asserted; what is asserted is that alttrain's Trainer, the hand-written loop and
the Lightning module leave bit-identical weights, buffers, optimizer state and RNG state.
"""

import importlib
import importlib.util
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SCRIPTS

from alttrain.benchmarks import alttrain_trainer, make_setup
from alttrain.benchmarks.plain_loop import PlainLoop
from alttrain.errors import ConfigError

STEPS = 3
# DCGAN shrunk to seconds; it keeps BatchNorm in both networks, so buffers are compared too.
WORKLOADS = [("mlp", {"batch_size": 64}), ("dcgan", {"batch_size": 8, "image_size": 16, "base_width": 4})]


def final_state(setup, optimizers):
    state = {f"G.{k}": v for k, v in setup.generator.state_dict().items()}
    state.update({f"D.{k}": v for k, v in setup.discriminator.state_dict().items()})
    for name, opt in optimizers.items():
        for i, per_param in enumerate(opt.state_dict()["state"].values()):
            state.update({f"{name}.opt{i}.{k}": v for k, v in per_param.items()})
    state["rng"] = torch.get_rng_state()
    stream = setup.stream.state_dict()
    state["stream"] = torch.tensor([v for _, v in sorted(stream.items()) if isinstance(v, int)])
    return state


def plain_state(workload, sizes, freeze_d=True, reuse_fakes=True):
    setup = make_setup(workload, seed=3, **sizes)
    loop = PlainLoop(setup, freeze_d=freeze_d, reuse_fakes=reuse_fakes)
    loop.run(STEPS)
    return final_state(setup, {"G": loop.g_opt, "D": loop.d_opt})


def assert_identical(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


@pytest.mark.parametrize("reuse_fakes", [True, False])
@pytest.mark.parametrize("workload,sizes", WORKLOADS)
def test_the_trainer_and_the_plain_loop_end_bit_identical(workload, sizes, reuse_fakes):
    """With reuse_fakes the loop is pytorch/examples' (one G forward per step); without, one per update."""
    setup = make_setup(workload, seed=3, **sizes)
    trainer = alttrain_trainer(setup, max_steps=STEPS, reuse_fakes=reuse_fakes)
    assert bool(trainer.reuse) == reuse_fakes
    trainer.fit()
    alt = final_state(setup, {"G": trainer.network("generator").optimizer,
                              "D": trainer.network("discriminator").optimizer})
    assert trainer.state.phase_updates == {"D": STEPS, "G": STEPS}
    assert_identical(alt, plain_state(workload, sizes, reuse_fakes=reuse_fakes))
    if reuse_fakes:  # and the two settings really differ
        assert not all(torch.equal(a, b) for a, b in zip(alt.values(), plain_state(workload, sizes, reuse_fakes=False).values()))


@pytest.mark.parametrize("workload,sizes", WORKLOADS)
def test_lightning_with_toggle_optimizer_ends_bit_identical(workload, sizes):
    pytest.importorskip("lightning")
    from alttrain.benchmarks.lightning_gan import fit_lightning

    setup = make_setup(workload, seed=3, **sizes)
    module = fit_lightning(setup, STEPS)
    opt_d, opt_g = module.trainer.optimizers
    assert_identical(final_state(setup, {"G": opt_g, "D": opt_d}), plain_state(workload, sizes, reuse_fakes=False))


def test_the_logged_variants_compute_the_same_and_write_tensorboard(tmp_path):
    # Logging (TensorBoard every LOG_EVERY steps, a progress bar) is what the "-logged" rows add
    # to the timing; it must change no number, and it must really log.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workload, sizes = WORKLOADS[0]
    setup = make_setup(workload, seed=3, **sizes)
    trainer = alttrain_trainer(setup, max_steps=STEPS, log_dir=str(tmp_path / "alt"))
    trainer.fit()
    alt = final_state(setup, {"G": trainer.network("generator").optimizer,
                              "D": trainer.network("discriminator").optimizer})
    assert_identical(alt, plain_state(workload, sizes))
    acc = EventAccumulator(str(tmp_path / "alt"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/D")] == [0]  # LOG_EVERY = 50 > STEPS: step 0 only
    assert "grad_norm/generator/all" in acc.Tags()["scalars"]
    if importlib.util.find_spec("lightning") is None:
        return
    from alttrain.benchmarks.lightning_gan import fit_lightning

    setup = make_setup(workload, seed=3, **sizes)
    module = fit_lightning(setup, STEPS, log_dir=str(tmp_path / "pl"))
    opt_d, opt_g = module.trainer.optimizers
    assert_identical(final_state(setup, {"G": opt_g, "D": opt_d}), plain_state(workload, sizes, reuse_fakes=False))
    assert module.trainer.logger is not None and module.trainer.progress_bar_callback is not None
    assert set(module.trainer.logged_metrics) == {"loss/D", "loss/G"}


def test_freezing_d_in_the_g_update_changes_cost_not_results():
    # D left trainable gets weight gradients from G's loss; the next D update clears them before
    # its own backward, so every weight ends up the same: freezing is about speed and hygiene.
    frozen, trainable = plain_state(*WORKLOADS[0]), plain_state(*WORKLOADS[0], freeze_d=False)
    assert_identical(frozen, trainable)
    setup = make_setup("mlp", seed=3, batch_size=64)
    loop = PlainLoop(setup)
    for freeze_d in (True, False):
        loop.freeze_d = freeze_d
        loop.d_step()
        d_grads = [p.grad.clone() for p in setup.discriminator.parameters()]
        loop.g_step()
        unchanged = [torch.equal(p.grad, g) for p, g in zip(setup.discriminator.parameters(), d_grads)]
        assert all(unchanged) if freeze_d else not any(unchanged)  # G's loss reached D's .grad
    assert all(p.requires_grad for p in setup.discriminator.parameters())  # flags restored


def test_an_unknown_workload_or_size_is_one_readable_error():
    with pytest.raises(ConfigError, match="unknown workload 'resnet'; choose one of: mlp, dcgan"):
        make_setup("resnet")
    with pytest.raises(ConfigError, match="workload 'mlp' has no size 'image_size'"):
        make_setup("mlp", image_size=32)


def test_bench_script_checks_times_and_tabulates(tmp_path):
    cmd = [sys.executable, str(SCRIPTS / "bench.py"), "--workloads", "mlp", "--impls", "plain,alttrain",
           "--rounds", "1", "--steps", "3", "--warmup", "1", "--threads", "1", "--clock", "cpu", "--no-gphase"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "- mlp: alttrain vs plain after 2 steps: bit-identical" in out
    assert "| mlp | plain |" in out and "| mlp | alttrain |" in out and "x (plain) |" in out
    assert "mlp: alttrain / plain = " in out and "(interleaved in one process; target >= 0.97x)" in out
    assert "| mlp | alttrain / plain |" in out and "| >= 0.97x |" in out
    assert "lightning" not in out.split("correctness")[1]  # left out when not asked for


def test_the_in_process_pairing_and_the_block_timer_report_rates():
    from alttrain.benchmarks import timing as bench

    for num in ("alttrain", "alttrain-logged"):
        paired = bench.time_paired("mlp", num, "plain", steps=4, warmup=1, device="cpu", seed=0, clock="cpu",
                                   blocks=2)
        assert set(paired) == {"ratio", "num_steps_per_s", "den_steps_per_s"} and min(paired.values()) > 0
    for impl in ("plain", "plain-separate", "alttrain", "alttrain-logged", "alttrain-separate"):
        rates = bench.time_impl(impl, "mlp", steps=4, warmup=1, device="cpu", seed=0, clock="wall", blocks=2)
        assert set(rates) == {"steps_per_s", "mean_steps_per_s"} and min(rates.values()) > 0


def test_the_lightning_pairings_run_in_one_process():
    pytest.importorskip("lightning")
    from alttrain.benchmarks import timing as bench

    for num, den in (("alttrain-separate", "lightning"), ("alttrain-separate-logged", "lightning-logged")):
        paired = bench.time_paired("mlp", num, den, steps=4, warmup=1, device="cpu", seed=0, clock="cpu", blocks=2)
        assert set(paired) == {"ratio", "num_steps_per_s", "den_steps_per_s"} and min(paired.values()) > 0


def test_the_g_phase_timer_reports_both_settings():
    from alttrain.benchmarks import timing as bench

    result = bench.time_g_phase("mlp", steps=4, warmup=1, device="cpu", seed=0, clock="cpu", blocks=2)
    assert set(result) == {"g_frozen_s", "g_trainable_s"} and min(result.values()) > 0


def import_script(name):
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPTS))


def test_bench_modes_trains_every_experiment_through_the_real_entry(tmp_path, capsys):
    bench_modes = import_script("bench_modes")
    results = bench_modes.main(["--seeds", "1", "--steps", "4", "--out", str(tmp_path), "metrics.num_samples=100"])
    assert set(results) == {"ring8", "grid25"}
    for name, runs in results.items():
        assert len(runs) == 1 and {"modes", "high_quality", "wall_s", "cpu_s"} <= set(runs[0])
        assert (tmp_path / name / "seed0" / "checkpoints" / "last.pt").is_file()
        assert (tmp_path / name / "seed0" / ".hydra" / "overrides.yaml").read_text().count("seed=0") == 1
    table = capsys.readouterr().out
    assert "| ring8 | 1 |" in table and "| grid25 | 1 |" in table
