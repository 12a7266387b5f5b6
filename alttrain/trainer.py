"""The phase loop. It trains, counts and reports; it never touches files or TensorBoard.

One *step* is one pass over the schedule (``Phase.is_due``). Every due phase, ``repeat`` times:

1. enter the phase's freeze plan: its network's active groups trainable, everything else not,
   idle buffers snapshotted;
2. zero that network's gradients (``set_to_none``), run ``accumulate`` micro-batches of
   forward + backward;
3. step that network's optimizer only, set its gradients to ``None`` again (idle parameters
   never carry a stale ``.grad``);
4. leave the plan: flags and idle buffers restored; report a :class:`PhaseResult`.

Non-finite values (``on_nan``): under ``raise`` (the default) every update records its loss on
the device, and :meth:`Trainer.verify_finite` checks those losses and every network's weights with
one host sync: every ``nan_check_every`` steps, before every checkpoint and at the end. A
non-finite gradient shows in the weights it was stepped into, so no per-update gradient check is
needed. The error names the first non-finite loss (or the network and the steps, when only a
gradient was), and no checkpoint ever holds its result. ``nan_check_every=1`` checks each
update's loss and gradient norm before its optimizer step and names the exact update. Under
``skip`` that check runs before each optimizer step (one host sync per update), so the update can
be discarded.

Counters: ``step`` counts schedule passes, ``phase_updates[name]`` optimizer updates (one per
``accumulate`` micro-batches), ``samples`` real samples drawn by all processes together. One
update trains on ``batch_size * accumulate * world_size`` samples (the effective batch); under
DDP, gradients are all-reduced once per update, on its last micro-batch.

Learning-rate schedules: each network's ``scheduler`` (if any) is stepped once per trainer step,
at the end of the step after all its phases and before the callbacks' ``on_step_end``. So a
schedule counts trainer steps (``T_max``, ``total_iters`` and ``PiecewiseLinearLR`` points are
in the unit of ``max_steps``), every update of step ``s`` uses the schedule's value at ``s``, and a
checkpoint written at the end of step ``s`` holds the lr step ``s + 1`` will use.

What a phase's loss sees is a *view* of the pair (:meth:`Trainer._build_views`): compiled
forwards (``compile``), the phase's own network under DDP (``replicas``), float32 logits under
mixed precision. Without any of those the view is ``gan`` itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from alttrain.audit import IdleAudit
from alttrain.callbacks.base import Callback, CallbackList, PhaseResult
from alttrain.compile import Backend, compile_module, needs_double_backward
from alttrain.distributed import Replicas, replica_tensors, zero_tie
from alttrain.ema import EMA
from alttrain.errors import ConfigError, NonFiniteError
from alttrain.freeze import FreezePlan
from alttrain.network import Network
from alttrain.objectives import GANPair
from alttrain.phases import Phase, validate_schedule
from alttrain.precision import Precision
from alttrain.schedules import check_scheduler

ON_NAN = ("raise", "skip")
_NO_CONTEXT = contextlib.nullcontext()  # reusable: one object instead of one per micro-batch


@dataclass
class TrainState:
    """Counters that a checkpoint must carry for an exact resume."""

    step: int = 0                                             # completed schedule passes
    phase_updates: dict[str, int] = field(default_factory=dict)  # optimizer updates per phase
    samples: int = 0                                          # real samples drawn, all processes together
    skipped: dict[str, int] = field(default_factory=dict)     # non-finite updates discarded per phase

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "phase_updates": dict(self.phase_updates), "samples": self.samples,
                "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.samples = int(state["step"]), int(state["samples"])
        self.phase_updates = {k: int(v) for k, v in state["phase_updates"].items()}
        self.skipped = {k: int(v) for k, v in state.get("skipped", {}).items()}


class Trainer:
    """Alternating training of ``networks`` by a schedule of ``phases``.

    ``stream`` yields real batches (an iterator with ``state_dict``; this process's shard); ``gan``
    holds the plain modules. ``log_every`` says on which steps per-group gradient norms are computed
    for callbacks. ``ema`` follows the network whose module is ``ema.source``. ``replicas`` (under
    torchrun) wraps phases in DDP and makes the ranks agree every ``replicas.sync_every`` steps and
    at the end. ``compile`` is a ``torch.compile`` backend (``None``: eager). ``nan_check_every``:
    steps between checks of the values recorded under ``on_nan="raise"`` (1: every update, before its
    optimizer step).
    """

    def __init__(self, networks: Sequence[Network], phases: Sequence[Phase], gan: GANPair, stream: Iterator,
                 max_steps: int, callbacks: Sequence[Callback] = (), on_nan: str = "raise", audit: bool = False,
                 log_every: int = 0, precision: Precision | None = None, ema: EMA | None = None,
                 replicas: Replicas | None = None, compile: Backend | None = None, nan_check_every: int = 50):
        if on_nan not in ON_NAN:
            raise ConfigError(f"trainer.on_nan must be one of {', '.join(ON_NAN)}, got {on_nan!r}")
        if isinstance(nan_check_every, bool) or not isinstance(nan_check_every, int) or nan_check_every < 1:
            raise ConfigError(f"trainer.nan_check_every must be an integer >= 1, got {nan_check_every!r}")
        validate_schedule(phases, networks)
        self.networks, self.phases, self.gan, self.stream = list(networks), list(phases), gan, stream
        for net in self.networks:
            if net.scheduler is not None:
                check_scheduler(net.scheduler, f"the scheduler of '{net.name}'")
        # Listed once: a run without schedules does no per-step work for them.
        self.schedulers = [net.scheduler for net in self.networks if net.scheduler is not None]
        self.max_steps, self.on_nan, self.audit, self.log_every = max_steps, on_nan, audit, log_every
        self.nan_check_every = nan_check_every
        self.precision = precision or Precision("32")
        self.ema, self.replicas = ema, replicas
        self.world_size = replicas.world_size if replicas is not None else 1
        self.callbacks = CallbackList(callbacks)
        self.plans = {p.name: FreezePlan(self.networks, p.network, p.groups) for p in self.phases}
        self.state = TrainState(phase_updates={p.name: 0 for p in self.phases},
                                skipped={p.name: 0 for p in self.phases})
        self.should_stop = False
        self.rank_rng: list[dict] | None = None  # every rank's RNG state at the last agreement (for checkpoints)
        self._synced_at: int | None = None
        # (phase, step, loss) per update since the last verify_finite
        self._unchecked: list[tuple[str, int, torch.Tensor]] = []
        self._build_views(compile)

    def network(self, name: str) -> Network:
        return next(n for n in self.networks if n.name == name)

    def _build_views(self, backend: Backend | None) -> None:
        """Per phase: the pair its loss sees (``views``), its DDP wrapper (``ddp``), whether to tie (``tied``)."""
        self.views, self.ddp, self.tied = {}, {}, set()
        if backend is None and self.replicas is None and self.precision.dtype is None:
            self.views = {p.name: self.gan for p in self.phases}
            return
        modules = (self.gan.generator, self.gan.discriminator)
        if self.replicas is not None:
            for module in modules:
                self.replicas.prepare(module)
        compiled = {id(m): compile_module(m, backend) for m in modules} if backend is not None else {}
        wrappers: dict[tuple, torch.nn.Module] = {}
        for phase in self.phases:
            eager = needs_double_backward(phase.loss)  # AOTAutograd has no double backward
            pair = [m if eager else compiled.get(id(m), m) for m in modules]
            if self.replicas is not None:
                index = next((i for i, m in enumerate(modules) if m is phase.network.module), None)
                if index is None:
                    raise ConfigError(f"phase '{phase.name}' trains a module that is neither the generator nor "
                                      "the discriminator of the GAN pair, so DDP cannot wrap it")
                plan = self.plans[phase.name]
                key = (id(pair[index]), frozenset(map(id, plan.enable)))
                if key not in wrappers:
                    with plan():  # DDP registers the parameters that require grad at wrap time
                        wrappers[key] = self.replicas.wrap(pair[index])
                pair[index] = self.ddp[phase.name] = wrappers[key]
                if eager:
                    self.tied.add(phase.name)
            self.views[phase.name] = dataclasses.replace(self.gan, generator=pair[0],
                                                         discriminator=self.precision.float_logits(pair[1]))

    # -- the loop -------------------------------------------------------------------------------

    def fit(self) -> TrainState:
        self.callbacks.on_train_start(self)
        try:
            while self.state.step < self.max_steps and not self.should_stop:
                self.train_step()
            self.verify_finite()
            if self.replicas is not None and self._synced_at != self.state.step:
                self._sync_replicas()
        except BaseException as exc:
            self.callbacks.on_exception(self, exc)
            raise
        self.callbacks.on_train_end(self)
        return self.state

    def _sync_replicas(self) -> None:
        """Rank 0's buffers everywhere, proof that all ranks agree, and every rank's RNG state."""
        modules = [n.module for n in self.networks] + ([self.ema.model] if self.ema is not None else [])
        self.rank_rng = self.replicas.sync(modules, replica_tensors(self.networks, self.ema))
        self._synced_at = self.state.step

    def train_step(self) -> None:
        step = self.state.step
        for phase in self.phases:
            if phase.is_due(step):
                for _ in range(phase.repeat):
                    self.callbacks.on_phase_end(self, self._update(phase, step))
        if self.schedulers:
            self._step_schedulers()
        self.state.step = step + 1
        every = self.replicas.sync_every if self.replicas is not None else 0
        if every and self.state.step % every == 0:
            self.verify_finite()  # every rank, at the same step: a failure stops them all
            self._sync_replicas()  # before the callbacks: the checkpoint written now holds agreed state
        elif self.state.step % self.nan_check_every == 0:
            self.verify_finite()
        self.callbacks.on_step_end(self)

    def _step_schedulers(self) -> None:
        with warnings.catch_warnings():
            # A schedule counts trainer steps, so it advances even when its optimizer made no update in
            # this step (a GradScaler or on_nan=skip discarded it, or no phase of the network was due).
            # torch warns about exactly that on a scheduler's first step.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before",
                                    category=UserWarning)
            for scheduler in self.schedulers:
                scheduler.step()

    def _update(self, phase: Phase, step: int) -> PhaseResult:
        net, plan = phase.network, self.plans[phase.name]
        audit = IdleAudit(plan, self.networks, phase.name) if self.audit else None
        with plan():
            for p in net.all_params:  # a stale .grad, even on an inactive group, would be stepped
                p.grad = None
            loss, scalars = self._forward_backward(phase)
            finite = self._record_finite(phase, step, loss)
            if self.log_every and step % self.log_every == 0:
                scalars.update(self._grad_norms(phase))
            if finite:
                self.precision.step(net)
                self.state.phase_updates[phase.name] += 1
                if self.ema is not None and net.module is self.ema.source:
                    self.ema.update(self.gan.batch_size * phase.accumulate * self.world_size)
            else:
                self.state.skipped[phase.name] += 1
            for p in plan.enable:  # only these can have received a gradient in this phase
                p.grad = None
        if audit is not None:
            audit.verify()
        return PhaseResult(phase, step, loss, scalars, skipped=not finite)

    def _forward_backward(self, phase: Phase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum gradients over ``accumulate`` micro-batches; returns the mean loss (detached)."""
        total, scalars, view = None, {}, self.views[phase.name]
        for micro in range(phase.accumulate):
            real = self._next_real() if phase.loss.needs_real else None
            with self._sync_context(phase, last=micro == phase.accumulate - 1), self.precision.autocast():
                loss, scalars = phase.loss(view, real)
            factor = phase.weight / phase.accumulate
            scaled = loss if factor == 1.0 else loss * factor  # x * 1.0 == x: skip an op and its backward
            if phase.name in self.tied:
                scaled = scaled + zero_tie(self.plans[phase.name].enable)
            self.precision.backward(phase.network, scaled)
            total = loss.detach() if total is None else total + loss.detach()
        return total / phase.accumulate if phase.accumulate > 1 else total, scalars

    def _next_real(self) -> torch.Tensor:
        real = next(self.stream)
        self.state.samples += real.shape[0] * self.world_size
        return real.to(self.gan.device, non_blocking=True)

    def _sync_context(self, phase: Phase, last: bool):
        """Under DDP, all-reduce gradients only on the last micro-batch of an update."""
        wrapper = self.ddp.get(phase.name)
        if not last and wrapper is not None:
            return wrapper.no_sync()
        return _NO_CONTEXT

    def _record_finite(self, phase: Phase, step: int, loss: torch.Tensor) -> bool:
        """Whether to apply this update; under ``raise``, only records it for :meth:`verify_finite`."""
        if self.precision.handles_overflow:
            return True  # with a GradScaler, overflow is its business: it skips and backs off
        if self.on_nan == "raise" and self.nan_check_every > 1:
            # The loss only: a non-finite gradient poisons the weights it is stepped into (Adam, SGD),
            # and verify_finite checks those, so no per-update gradient norm is needed.
            self._unchecked.append((phase.name, step, loss))
            return True
        grads = [p.grad for p in self.plans[phase.name].enable if p.grad is not None]
        norm = _total_norm(grads) if grads else None
        bad = not _all_finite([loss] if norm is None else [loss, norm])  # one host sync for both
        if self.on_nan == "raise":  # nan_check_every == 1: before the optimizer step, so the weights stay finite
            if bad:
                what = f"loss {loss.item()}" if not torch.isfinite(loss) else f"gradient (norm {norm.item()})"
                raise _non_finite(f"{what} in phase '{phase.name}' at step {step}")
            return True
        if self.replicas is not None:
            bad = self.replicas.any(bad)  # losses are per rank: all ranks must skip together
        return not bad

    def verify_finite(self) -> None:
        """Raise :class:`NonFiniteError` if an update recorded since the last call was non-finite.

        One host sync checks every recorded loss and the weights of every network. The error names
        the first non-finite loss, or, if every loss was finite, the network whose weights a
        non-finite gradient reached. A non-finite gradient behind a finite loss also makes the next
        loss non-finite, so the named update may be one after it; ``nan_check_every=1`` checks every
        gradient before its step. Gradients are all-reduced under DDP, so every rank finds
        non-finite weights at the same check.
        """
        records, self._unchecked = self._unchecked, []
        if not records:
            return
        weight_norms = [_total_norm(n.all_params) for n in self.networks]
        if _all_finite([loss for _, _, loss in records] + weight_norms):
            return
        hint = f"the first since step {records[0][1]}; trainer.nan_check_every=1 checks each gradient too"
        for name, step, loss in records:
            if not torch.isfinite(loss):
                raise _non_finite(f"loss {loss.item()} in phase '{name}' at step {step} ({hint})")
        bad = next(n.name for n, norm in zip(self.networks, weight_norms) if not torch.isfinite(norm))
        raise _non_finite(f"weights of '{bad}' after steps {records[0][1]}-{records[-1][1]}, whose losses were "
                          "finite (a gradient was not; trainer.nan_check_every=1 stops at the exact update)")

    def _grad_norms(self, phase: Phase) -> dict[str, torch.Tensor]:
        net, out = phase.network, {}
        active = set(phase.groups) if phase.groups is not None else None
        for group in net.trainable_groups:
            if active is not None and group.name not in active:
                continue
            grads = [p.grad for p in group.params if p.grad is not None]
            if grads:
                norm = _total_norm(grads)
                out[f"grad_norm/{net.name}/{group.name}"] = self.precision.unscaled_norm(net, norm)
        return out

    # -- checkpointed state -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly, except RNG states (the checkpointer adds them)."""
        state = {
            "trainer": self.state.state_dict(),
            "models": {n.name: _unwrap(n.module).state_dict() for n in self.networks},
            "optimizers": {n.name: n.optimizer.state_dict() for n in self.networks},
            "data": self.stream.state_dict(),
            "precision": self.precision.state_dict(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.schedulers:
            state["schedulers"] = {n.name: n.scheduler.state_dict() for n in self.networks if n.scheduler is not None}
        if self.rank_rng is not None:
            state["rng_ranks"] = self.rank_rng  # rank 0's is also "rng", which the checkpointer adds
        return state


def _non_finite(what: str) -> NonFiniteError:
    return NonFiniteError(f"non-finite {what}; no checkpoint holds it. Lower the learning rate, or set "
                          "trainer.on_nan=skip")


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all of ``tensors`` together, on their device (no host sync)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """One host sync for many 0-d tensors (losses, norms); converting each first costs ops per tensor."""
    try:
        stacked = torch.stack(tensors)  # promotes dtypes; fails only on mixed shapes or devices
    except RuntimeError:
        stacked = torch.stack([t.float().reshape(()).to(tensors[0].device) for t in tensors])
    return bool(torch.isfinite(stacked).all())


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def load_trainer_state(trainer: Trainer, state: dict[str, Any]) -> None:
    """Restore what :meth:`Trainer.state_dict` saved (models first, so a shape mismatch is named early)."""
    from alttrain.checkpoint import load_into
    from alttrain.errors import CheckpointError
    from alttrain.resume import config_settings, restore_config_settings, warn_schedule_differences

    for net in trainer.networks:
        load_into(_unwrap(net.module), state["models"][net.name], net.name)
    for net in trainer.networks:
        settings = config_settings(net)
        try:
            net.optimizer.load_state_dict(state["optimizers"][net.name])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"the checkpoint's {net.name} optimizer does not fit this run's param groups "
                                  f"({exc}); resume with the same optim.{net.name}.param_groups") from None
        restore_config_settings(net, settings)
    trainer.stream.load_state_dict(state["data"])
    trainer.precision.load_state_dict(state.get("precision", {}))
    if trainer.ema is not None:
        if "ema" not in state:
            raise CheckpointError("this run has an EMA generator but the checkpoint holds none; "
                                  "resume with the original trainer.ema settings")
        trainer.ema.load_state_dict(state["ema"])
    schedulers = state.get("schedulers", {})
    for net in trainer.networks:
        schedule = schedulers.get(net.name)
        warn_schedule_differences(net, schedule)
        if net.scheduler is None:
            continue
        if schedule is None:
            raise CheckpointError(f"this run has a {net.name} lr scheduler but the checkpoint holds none for it; "
                                  f"resume with the original optim.{net.name}.scheduler")
        net.scheduler.load_state_dict(schedule)
    saved = TrainState()
    saved.load_state_dict(state["trainer"])
    # Phases added on resume start their counters at zero.
    saved.phase_updates = {p.name: saved.phase_updates.get(p.name, 0) for p in trainer.phases}
    saved.skipped = {p.name: saved.skipped.get(p.name, 0) for p in trainer.phases}
    trainer.state = saved
