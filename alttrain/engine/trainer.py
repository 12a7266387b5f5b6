"""The phase loop. It trains, counts and reports; it never touches files or loggers.

One *step* is one pass over the schedule (``Phase.is_due``). Every due phase, ``repeat`` times:

1. enter the phase's freeze plan: its networks' active groups trainable, everything else not,
   idle buffers snapshotted;
2. clear those networks' gradients, run ``accumulate`` micro-batches of forward + backward;
3. step each trained network's optimizer, clear the gradients again (idle parameters never carry
   a stale ``.grad``);
4. leave the plan: flags and idle buffers restored; report a :class:`PhaseResult`.

Counters: ``step`` counts schedule passes, ``phase_updates[name]`` optimizer updates (one per
``accumulate`` micro-batches), ``samples`` real samples drawn by all processes together. One
update trains on ``batch_size * accumulate * world_size`` samples (the effective batch); under
DDP, gradients are all-reduced once per update, on its last micro-batch. Non-finite values are the
business of :mod:`alttrain.engine.guard`.

Learning-rate schedules: each network's ``scheduler`` (if any) is stepped once per trainer step,
at the end of the step after all its phases and before the callbacks' ``on_step_end``. So a
schedule counts trainer steps, every update of step ``s`` uses the schedule's value at ``s``, and a
checkpoint written at the end of step ``s`` holds the lr step ``s + 1`` will use.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from alttrain.checks import check_int
from alttrain.engine.audit import IdleAudit
from alttrain.engine.batch import Batch, LatentPrior, infer_latent_shape
from alttrain.engine.freeze import FreezePlan
from alttrain.engine.guard import NonFiniteGuard, grad_norms
from alttrain.engine.hooks import Callback, CallbackList, PhaseResult
from alttrain.engine.network import Network, device_of
from alttrain.engine.phase import Phase, validate_schedule
from alttrain.engine.reuse import drop_fakes, plan_reuse, share_fakes
from alttrain.engine.views import build_views, zero_tie
from alttrain.errors import ConfigError
from alttrain.scale.compile import Backend
from alttrain.scale.distributed import Replicas, replica_tensors
from alttrain.scale.ema import EMA
from alttrain.scale.precision import Precision
from alttrain.scale.schedules import check_scheduler, step_schedulers

_NO_CONTEXT = contextlib.nullcontext()  # reusable: one object instead of one per micro-batch


@dataclass
class TrainState:
    """Counters that a checkpoint must carry for an exact resume."""

    step: int = 0                                             # completed schedule passes
    phase_updates: dict[str, int] = field(default_factory=dict)  # optimizer updates per phase
    samples: int = 0                                          # real samples drawn, all processes together
    skipped: dict[str, int] = field(default_factory=dict)     # non-finite updates discarded per phase


class Trainer:
    """Alternating training of ``networks`` by a schedule of ``phases``, on real batches from ``stream``.

    ``stream`` yields :class:`Batch` es (an iterator with ``state_dict`` and ``batch_size``; this
    process's shard). ``prior`` draws z (and labels) for fakes; by default ``N(0, I)`` of the
    networks' shared ``latent_dim``. ``log_every`` says on which steps per-group gradient norms are
    computed for callbacks. ``ema`` follows the network whose module is ``ema.source``. ``replicas``
    (under torchrun) wraps trained networks in DDP and makes the ranks agree every
    ``replicas.sync_every`` steps and at the end. ``compile`` is a ``torch.compile`` backend
    (``None``: eager). ``on_nan``/``nan_check_every``: see :class:`NonFiniteGuard`. ``transforms``
    maps a network's name to a function applied to its first input in every phase (augmentation).
    ``reuse_fakes``: ``auto`` (one generator forward per step where the schedule allows it, see
    :mod:`alttrain.engine.reuse`), ``True`` (demand it) or ``False`` (every phase draws its own fakes).
    """

    def __init__(self, networks: Sequence[Network], phases: Sequence[Phase], stream: Iterator[Batch],
                 max_steps: int, callbacks: Sequence[Callback] = (), prior: LatentPrior | None = None,
                 batch_size: int | None = None, on_nan: str = "raise", nan_check_every: int = 50,
                 audit: bool = False, log_every: int = 0, precision: Precision | None = None,
                 ema: EMA | None = None, replicas: Replicas | None = None, compile: Backend | None = None,
                 transforms: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                 reuse_fakes: str | bool = "auto"):
        validate_schedule(phases, networks)
        self.networks, self.phases, self.stream = list(networks), list(phases), stream
        self.max_steps = check_int("trainer.max_steps", max_steps, 1)
        for net in self.networks:
            if net.scheduler is not None:
                check_scheduler(net.scheduler, f"the scheduler of '{net.name}'")
        # Listed once: a run without schedules does no per-step work for them.
        self.schedulers = [net.scheduler for net in self.networks if net.scheduler is not None]
        self.audit, self.log_every = audit, log_every
        self.precision = precision or Precision("32")
        self.ema, self.replicas = ema, replicas
        self.world_size = replicas.world_size if replicas is not None else 1
        self.guard = NonFiniteGuard(on_nan, nan_check_every, replicas.any if replicas is not None else None)
        self.callbacks = CallbackList(callbacks)
        self.device = device_of(self.networks)
        self.batch_size = batch_size if batch_size is not None else getattr(stream, "batch_size", None)
        if self.batch_size is None:
            raise ConfigError("the Trainer needs the batch size of fakes: pass batch_size= or a stream with one")
        if prior is None:
            shape = infer_latent_shape([n.module for n in self.networks])
            prior = LatentPrior(shape, device=self.device) if shape is not None else None
        self.prior = prior
        self.plans = {p.name: FreezePlan(self.networks, p.networks, p.groups) for p in self.phases}
        # Per phase, every parameter whose .grad is cleared before its update (inactive groups too:
        # a stale .grad on one would be stepped), and the key of its GradScaler under fp16.
        self._owned = {p.name: [q for net in p.networks for q in net.all_params] for p in self.phases}
        self._scaler_keys = {p.name: "+".join(p.network_names) for p in self.phases}
        self.state = TrainState(phase_updates={p.name: 0 for p in self.phases},
                                skipped={p.name: 0 for p in self.phases})
        self.should_stop = False
        # Set asynchronously (a signal handler): stop at the end of the current step, agreed by every rank.
        self.stop_requested: str | None = None
        self.profiling = False  # set by a profiler callback while it records
        self.rank_rng: list[dict] | None = None  # every rank's RNG state at the last agreement (for checkpoints)
        self._synced_at: int | None = None
        # Kept for checkpoints: a transform with state_dict (an augmentation's p and random stream) travels in them.
        self.transforms = dict(transforms or {})
        self.views = build_views(self.networks, self.phases, self.plans, self.prior, self.batch_size,
                                 self.precision, replicas, compile, self.transforms)
        self.reuse = plan_reuse(self.phases, reuse_fakes)  # {producer phase: pair}: one G forward per step
        self._consumers = {pair.consumer: pair for pair in self.reuse.values()}

    def network(self, name: str) -> Network:
        for net in self.networks:
            if net.name == name:
                return net
        raise KeyError(f"no network named '{name}'; the trainer's networks are "
                       f"{', '.join(n.name for n in self.networks)}")

    # -- the loop -------------------------------------------------------------------------------

    def fit(self) -> TrainState:
        self.callbacks.on_train_start(self)
        try:
            while self.state.step < self.max_steps and not self.should_stop:
                self.train_step()
            if self.replicas is not None:
                self.replicas.finish_stop_agreement()
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
                pair = self.reuse.get(phase.name)
                for r in range(phase.repeat):
                    if pair is not None and r == phase.repeat - 1:
                        share_fakes(self, pair)  # the last D update's fakes are the G update's
                    with self._label(phase):
                        self.callbacks.on_phase_end(self, self._update(phase, step))
                if phase.name in self._consumers:
                    drop_fakes(self.views.games, self._consumers[phase.name])
        if self.schedulers:
            step_schedulers(self.schedulers)
        self.state.step = step + 1
        if not self.should_stop:
            asked = self.stop_requested is not None
            self.should_stop = self.replicas.agree_stop(asked) if self.replicas is not None else asked
        # The last step (max_steps or a stop) is checked and agreed before the callbacks, like a
        # checkpoint step: the final checkpoint is written in its on_step_end, before the final evaluation.
        last = self.state.step >= self.max_steps or self.should_stop
        every = self.replicas.sync_every if self.replicas is not None else 0
        if self.replicas is not None and (last or (every and self.state.step % every == 0)):
            self.verify_finite()  # every rank, at the same step: a failure stops them all
            self._sync_replicas()  # before the callbacks: the checkpoint written now holds agreed state
        elif last or self.state.step % self.guard.check_every == 0:
            self.verify_finite()
        self.callbacks.on_step_end(self)

    def _label(self, phase: Phase):
        """A profiler range per update while a profile is recorded (``profiling``), else nothing."""
        return torch.profiler.record_function(f"phase/{phase.name}") if self.profiling else _NO_CONTEXT

    def _clock(self, sync: bool) -> float:
        if sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # only on log steps: the time is then the device's too
        return time.perf_counter()

    def _update(self, phase: Phase, step: int) -> PhaseResult:
        plan, key = self.plans[phase.name], self._scaler_keys[phase.name]
        timed = bool(self.log_every) and step % self.log_every == 0  # time/phase/<name> on log steps
        start = self._clock(timed) if timed else 0.0
        audit = IdleAudit(plan, self.networks, phase.name) if self.audit else None
        with plan():
            for p in self._owned[phase.name]:
                p.grad = None
            loss, scalars = self._forward_backward(phase, key)
            # With a GradScaler, overflow is its business: it skips the step and backs off.
            finite = self.precision.handles_overflow or self.guard.admit(phase.name, step, loss, plan.enable)
            if self.log_every and step % self.log_every == 0:
                scalars.update(grad_norms(phase, lambda norm: self.precision.unscaled_norm(key, norm)))
            if finite:
                self.precision.step(key, [net.optimizer for net in phase.networks])
                self.state.phase_updates[phase.name] += 1
                if self.ema is not None and any(net.module is self.ema.source for net in phase.networks):
                    self.ema.update(self.batch_size * phase.accumulate * self.world_size)
            else:
                self.state.skipped[phase.name] += 1
            for p in plan.enable:  # only these can have received a gradient in this phase
                p.grad = None
        seconds = self._clock(timed) - start if timed else None
        if audit is not None:
            audit.verify()
        return PhaseResult(phase, step, loss, scalars, skipped=not finite, seconds=seconds)

    def _forward_backward(self, phase: Phase, key: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum gradients over ``accumulate`` micro-batches; returns the mean loss (detached)."""
        total, scalars, game = None, {}, self.views.games[phase.name]
        tied = phase.name in self.views.tied
        for micro in range(phase.accumulate):
            batch = self._next_batch() if phase.loss.needs_real else None
            with self.views.sync_context(phase.name, last=micro == phase.accumulate - 1), self.precision.autocast():
                loss, scalars = phase.loss(game, batch)
            factor = phase.weight / phase.accumulate
            scaled = loss if factor == 1.0 else loss * factor  # x * 1.0 == x: skip an op and its backward
            if tied:
                scaled = scaled + zero_tie(self.plans[phase.name].enable)
            self.precision.backward(key, scaled)
            total = loss.detach() if total is None else total + loss.detach()
        return total / phase.accumulate if phase.accumulate > 1 else total, scalars

    def _next_batch(self) -> Batch:
        batch = next(self.stream)
        self.state.samples += batch.size * self.world_size
        return batch.to(self.device, non_blocking=True)

    def verify_finite(self) -> None:
        """Raise :class:`~alttrain.errors.NonFiniteError` if an update since the last check was non-finite."""
        self.guard.verify(self.networks)
