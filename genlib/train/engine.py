"""One training engine for every genlib trainer: step, evaluate, checkpoint, resume, log, scale out.

A trainer writes only its loss; :class:`Engine` does the rest::

    engine = Engine(model, [opt], loss_fn, precision="bf16", compile=True,
                    checkpoint_dir="runs/x/checkpoints", settings={...}, logger=MetricsLogger("runs/x"))
    batches = StepBatches({"x": x_train}, batch_size=128, seed=0, **engine.shard)
    history = engine.fit(lambda start, stop: step_loader(batches, start, stop), n_steps=10_000,
                         evaluate=lambda: {"test_elbo": ...}, eval_every=1000)

``loss_fn(prepared) -> (loss, metrics)`` returns the scalar to minimise and a dict of scalar tensors to
record. ``prepare(batch)`` (optional) does a step's gradient-free random work once — Langevin negatives,
reparameterisation noise — so ``loss_fn`` is a deterministic function of the parameters, which closure
optimizers need (PSGD's ``"hvp"`` / ``"finite_diff"`` evaluate it more than once per step).

- **Optimizers**: any number (e.g. one per parameter set with its own learning rate). Optimizers that
  differentiate a closure themselves (:func:`~genlib.train.classify.needs_closure`) get ``step(closure)``
  in turn; all others ``backward()`` once, then ``step()`` each. ``grad_clip`` clips each optimizer's
  gradient norm, or, for closure optimizers, becomes PSGD's ``grad_clip_max_norm`` where a group left it
  unset (the optimizer takes its gradients itself).
- **Precision**: ``"bf16"`` / ``"fp16"`` run the loss under ``torch.autocast`` (fp16 with a
  ``GradScaler``); parameters and optimizer state stay fp32.
- **compile**: ``torch.compile`` of the model-and-loss module. genlib's value checks are switched off
  inside it (:func:`genlib.validate_args`), so its forward has no graph breaks of genlib's making. Not for
  closure optimizers (their second derivatives run eager, with a warning), and not ``prepare``: e.g. the
  semi-supervised trainer's Langevin chains stay eager and in fp32. ``compile_optimizers`` also compiles
  each optimizer's ``step`` (checks off too): a PSGD step, refit schedule included, is one graph.
- **Distributed**: under ``torchrun`` (:func:`~genlib.train.distributed.init_distributed`) the
  model-and-loss module is wrapped in ``DistributedDataParallel`` (closure optimizers instead average
  their gradients across ranks themselves, as genlib's PSGD does); :attr:`shard` gives a
  :class:`~genlib.train.batches.StepBatches` this rank's share of each global batch. Rank 0 alone writes
  checkpoints and logs and shows the progress bar; every rank resumes from the same file, on any world size.
- **Checkpoints** (:class:`~genlib.train.Checkpointer`): models, optimizers, scaler, the trainer's extra
  state and every rank's RNG states, atomically, every ``checkpoint_every`` units and at the end; a run
  repeated in the same folder continues (bit-exact on the same world size and device) and refuses other
  ``settings`` by name.

Progress is counted in *units* (``unit="iter"`` with one step each, or ``unit="epoch"`` with
``steps_per_unit`` batches): evaluation, logging and checkpoint cadences and the history are per unit.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from genlib.train.checkpoint import Checkpointer, get_rng_state, set_rng_state
from genlib.train.distributed import all_gather_objects, barrier, context
from genlib.train.logger import MetricsLogger
from genlib.utils import check_int, check_positive, default_device, derive_seed, validate_args

__all__ = ["Engine", "PRECISIONS", "needs_closure"]

PRECISIONS = ("fp32", "bf16", "fp16")
LossFn = Callable[[Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def needs_closure(opt: torch.optim.Optimizer) -> bool:
    """PSGD in "hvp" / "finite_diff" curvature modes differentiates a closure itself (no backward() by us)."""
    flag = getattr(opt, "needs_closure", None)
    if flag is not None:
        return bool(flag)
    curvature = getattr(opt, "curvature", None) or opt.defaults.get("curvature")
    return curvature in ("hvp", "finite_diff")


class _Objective(nn.Module):
    """The model and its loss as one module: what DDP wraps and ``torch.compile`` compiles."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, checks: bool):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.checks = checks

    def forward(self, prepared: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.checks:
            return self.loss_fn(prepared)
        with validate_args(False):
            return self.loss_fn(prepared)


def _unchecked(step: Callable[[], Any]) -> Callable[[], Any]:
    """``step`` run with genlib's value checks off (a compiled step: their host reads would break it)."""

    def run() -> Any:
        with validate_args(False):
            return step()

    return run


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class Engine:
    """Train ``model`` by minimising ``loss_fn`` with ``optimizers`` (see the module docstring).

    Args:
        model: every trainable module of the run (moved to ``device``); what DDP wraps.
        optimizers: one optimizer or a sequence, over disjoint parameters of ``model``.
        loss_fn: ``prepared -> (loss, metrics)``; ``metrics`` (scalar tensors, detached or not) are what the
            history and the log record (empty: ``{"loss": loss}``).
        prepare: ``batch -> prepared``, the step's gradient-free random work, run once per step (default:
            the batch itself). Batches arrive already on ``device``.
        device: default: ``cuda:LOCAL_RANK`` for a process of a distributed run on GPUs, else
            :func:`genlib.utils.default_device`.
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (autocast; fp16 with a ``GradScaler``).
        compile: ``torch.compile`` the model-and-loss module (with genlib's value checks off inside); a
            string names the ``torch.compile`` backend (default ``"inductor"``).
        compile_optimizers: ``torch.compile`` each optimizer's ``step`` too (same backend, checks off: no
            NaN check of PSGD's gradients). Not with closure optimizers or fp16's ``GradScaler``; keep each
            group's ``lr`` fixed (a new float value recompiles the step) or make it a 0-dim tensor that a
            scheduler changes in place. Each optimizer object compiles its own step: a process that builds
            more than ``torch._dynamo.config.recompile_limit`` (8) of them runs the rest eager, with
            dynamo's warning (raise the limit for studies of many runs, as ``benchmarks/optimizers.py``).
        grad_clip: max gradient norm per optimizer (``None``: no clipping).
        checkpoint_dir: folder of the run's checkpoints (``None``: none); ``checkpoint_every`` units apart.
        checkpointer: a ready :class:`~genlib.train.Checkpointer` instead (its ``every`` counts units).
        checkpoint_prefix, keep: the files' prefix and how many to keep.
        settings: what the run's result depends on, recorded in each checkpoint and checked on resume.
        stateful: other objects to checkpoint by name (LR schedulers, ``torch.Generator`` s).
        logger: receives the records of evaluations (every record when :meth:`fit` gets no ``evaluate``);
            rank 0 only.
        unit, steps_per_unit: what progress is counted in (``"iter"``, 1; ``"epoch"``, batches per epoch).
        progress: show a tqdm bar (rank 0 only). desc: its label.
        divergence_hint: appended to the error raised when the loss stops being finite, or a function
            ``(unit number, what became non-finite) -> message`` giving the whole message.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        loss_fn: LossFn,
        *,
        prepare: Callable[[Any], Any] | None = None,
        device: torch.device | str | None = None,
        precision: Literal["fp32", "bf16", "fp16"] = "fp32",
        compile: bool | str = False,
        compile_optimizers: bool = False,
        grad_clip: float | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpointer: Checkpointer | None = None,
        checkpoint_every: int = 1000,
        checkpoint_prefix: str = "ckpt",
        keep: int | None = 2,
        settings: dict[str, Any] | None = None,
        stateful: dict[str, Any] | None = None,
        logger: MetricsLogger | None = None,
        unit: str = "iter",
        steps_per_unit: int = 1,
        progress: bool = True,
        desc: str = "train",
        divergence_hint: str | Callable[[int, str], str] = "lower the learning rate",
    ):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        opts = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
        if not opts or not all(isinstance(o, torch.optim.Optimizer) for o in opts):
            raise ValueError("optimizers must be a torch.optim.Optimizer or a non-empty sequence of them")
        if not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable (prepared) -> (loss, metrics), got {loss_fn!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if grad_clip is not None:
            check_positive(grad_clip, "grad_clip")
        check_int(checkpoint_every, "checkpoint_every")
        check_int(steps_per_unit, "steps_per_unit")
        closure_flags = {needs_closure(o) for o in opts}
        if len(closure_flags) > 1:
            raise ValueError("optimizers mix step(closure) optimizers (PSGD 'hvp' / 'finite_diff') with "
                             "plain ones; give every parameter set the same curvature mode")
        self.closure = closure_flags.pop()
        if self.closure and precision == "fp16":
            raise ValueError("precision='fp16' needs a GradScaler, which closure optimizers (PSGD 'hvp' / "
                             "'finite_diff') cannot use: use precision='bf16' or 'fp32'")
        self.ctx = context()
        if device is not None:
            self.device = torch.device(device)
        elif self.ctx.distributed and torch.cuda.is_available():  # one GPU per torchrun process
            self.device = torch.device("cuda", self.ctx.local_rank)
        else:
            self.device = default_device()
        self.model = model.to(self.device)
        self.optimizers = opts
        self.prepare, self.grad_clip = prepare, grad_clip
        self.unit, self.steps_per_unit = unit, steps_per_unit
        self.progress, self.desc, self.divergence_hint = progress, desc, divergence_hint
        self.logger = logger if self.ctx.is_main else None
        self.stateful = dict(stateful or {})
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self._autocast: Callable[[], Any] = (
            contextlib.nullcontext if dtype is None
            else lambda: torch.autocast(self.device.type, dtype=dtype)
        )
        objective = _Objective(model, loss_fn, checks=not compile)
        forward: Callable[[Any], Any] = objective
        if self.ctx.distributed and not self.closure:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(objective, device_ids=ids)
        backend = compile if isinstance(compile, str) else "inductor"
        if compile:
            forward = torch.compile(forward, backend=backend)
        self._forward = forward
        self._loss = objective  # closure optimizers differentiate the unwrapped loss (and sync it themselves)
        if not isinstance(compile_optimizers, bool):
            raise ValueError(f"compile_optimizers must be True or False, got {compile_optimizers!r}")
        if compile_optimizers and (self.closure or self.scaler is not None):
            raise ValueError("compile_optimizers: closure optimizers (PSGD 'hvp' / 'finite_diff') and "
                             "precision='fp16' (a GradScaler steps the optimizers) need eager steps")
        self._steps = [_unchecked(torch.compile(o.step, backend=backend)) if compile_optimizers else o.step
                       for o in opts]
        if compile and self.closure:
            warnings.warn("compile: closure optimizers (PSGD 'hvp' / 'finite_diff') differentiate the loss "
                          "twice, which compiled graphs do not support; the loss runs eager", stacklevel=2)
        # closure optimizers: grad_clip bounds PSGD's step where a group left grad_clip_max_norm unset
        # (optimizer, group index), not the group dicts: load_state_dict replaces those on a resume
        self._clip_groups = [
            (o, i) for o in opts for i, g in enumerate(o.param_groups)
            if self.closure and g.get("grad_clip_max_norm", 0.0) is None
        ]
        if checkpointer is not None and checkpoint_dir is not None:
            raise ValueError("pass checkpoint_dir or a ready checkpointer, not both")
        if checkpointer is not None and not isinstance(checkpointer, Checkpointer):
            raise ValueError(
                f"checkpointer must be a genlib.train.Checkpointer, got {type(checkpointer).__name__}")
        self.checkpointer = checkpointer if checkpointer is not None else (
            Checkpointer(checkpoint_dir, every=checkpoint_every, keep=keep, prefix=checkpoint_prefix,
                         settings=settings)
            if checkpoint_dir is not None else None
        )
        self.units_done = 0
        self.steps_done = 0  # optimizer steps, also outside fit(): what per-step random streams key on
        self.history: dict[str, list[float]] = {}
        self._series: dict[str, set[str]] = {"step": set(), "eval": set()}  # which history lists align

    # ------------------------------------------------------------------ one step
    @property
    def shard(self) -> dict[str, int]:
        """``rank`` / ``world_size`` for :class:`~genlib.train.batches.StepBatches`."""
        return {"rank": self.ctx.rank, "world_size": self.ctx.world_size}

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One update of every optimizer from ``batch``; returns the metrics (detached, not synced) and
        ``objective``, the loss at the parameters the step started from."""
        if not self.model.training:  # evaluation switches it off; setting it every step costs a module walk
            self.model.train()
        batch = _to_device(batch, self.device)
        prepared = self.prepare(batch) if self.prepare is not None else batch
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.steps_done += 1
        if self.closure:
            return self._closure_step(prepared)
        with self._autocast():
            loss, metrics = self._forward(prepared)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        for opt in self.optimizers:
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            if self.grad_clip is not None:
                params = [p for g in opt.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        for opt, opt_step in zip(self.optimizers, self._steps):
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt_step()
        if self.scaler is not None:
            self.scaler.update()
        return self._record(loss, metrics)

    def _closure_step(self, prepared: Any) -> dict[str, torch.Tensor]:
        for opt, i in self._clip_groups:
            opt.param_groups[i]["grad_clip_max_norm"] = self.grad_clip
        first: dict[str, torch.Tensor] = {}

        def closure() -> torch.Tensor:
            with self._autocast():
                loss, metrics = self._loss(prepared)
            if not first:  # the first evaluation: at the parameters the step starts from
                first.update(self._record(loss, metrics))
            return loss

        for opt in self.optimizers:  # in turn: each differentiates the loss in its own parameters
            opt.step(closure)
        return first

    @staticmethod
    def _record(loss: torch.Tensor, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: (v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v)))
               for k, v in (metrics or {"loss": loss}).items()}
        out["objective"] = loss.detach().float()
        return out

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"model": self.model}
        for i, opt in enumerate(self.optimizers):
            state[f"optimizer{i}"] = opt
        if self.scaler is not None:
            state["scaler"] = self.scaler
        return {**state, **self.stateful}

    def save(self, extra: dict[str, Any] | None = None) -> None:
        """Checkpoint now (every rank's RNG states gathered; rank 0 writes)."""
        rng = all_gather_objects(get_rng_state())
        if self.checkpointer is not None and self.ctx.is_main:
            payload = {"history": self.history, "series": {k: sorted(v) for k, v in self._series.items()},
                       "rank_rng": rng, "world_size": self.ctx.world_size,
                       **(extra or {})}
            self.checkpointer.save(self.units_done, extra=payload, **self._state())
        barrier()

    def resume(self, total: int, total_name: str) -> dict[str, Any] | None:
        """Load the newest checkpoint (if any) into every object; returns its ``extra`` dict."""
        if self.checkpointer is None:
            return None
        resumed = self.checkpointer.resume(max_step=total, max_step_name=total_name, restore_rng=False,
                                           map_location="cpu", **self._state())
        if resumed is None:
            return None
        extra = dict(resumed.extra)
        rng = extra.pop("rank_rng", None)
        if rng is not None and extra.pop("world_size", None) == self.ctx.world_size:
            set_rng_state(rng[self.ctx.rank])
        else:  # another world size: each rank a fresh stream, still a function of the step only
            torch.manual_seed(derive_seed(0, "resume", resumed.step, self.ctx.rank))
        self.units_done = resumed.step
        self.steps_done = resumed.step * self.steps_per_unit
        self.history = {k: list(v) for k, v in extra.pop("history", {}).items()}
        self._series = {k: set(v) for k, v in extra.pop("series", {"step": [], "eval": []}).items()}
        return extra

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        batches: Callable[[int, int], Iterable[Any]],
        total: int,
        *,
        total_name: str = "n_iters",
        evaluate: Callable[[], dict[str, float]] | None = None,
        eval_every: int = 0,
        log_every: int = 1,
        before_unit: Callable[[int], None] | None = None,
        extra_state: Callable[[], dict[str, Any]] | None = None,
        on_resume: Callable[[dict[str, Any]], None] | None = None,
        on_save: Callable[[int], None] | None = None,
    ) -> dict[str, list[float]]:
        """Train until ``total`` units are done; returns the history.

        Args:
            batches: ``(start_step, stop_step) -> iterable`` of the batches of those steps (e.g.
                :func:`~genlib.train.batches.step_loader`); called again after each unit when a
                ``before_unit`` hook may have changed what the batches depend on.
            total: units to train to (continues from :attr:`units_done`, or from a checkpoint when the
                engine has not trained yet). ``total_name`` names it in the error for a checkpoint past it.
            evaluate: ``() -> {name: value}``, run every ``eval_every`` units and after the last.
            log_every: units between history / log records (each the mean of its steps' metrics); the
                loss's finiteness is checked at each (one device sync).
            before_unit: ``unit_index -> None``, run before each unit (e.g. re-selecting synthetic data).
            extra_state / on_resume: the trainer's own checkpointed state (plain data), saved and
                handed back on resume.
            on_save: ``units_done -> None``, run on rank 0 after each checkpoint (e.g. export the model).
        """
        check_int(total, total_name, 0)
        check_int(eval_every, "eval_every", 0)
        check_int(log_every, "log_every")
        if self.checkpointer is not None and not self.units_done:
            extra = self.resume(total, total_name)
            if extra is not None and on_resume is not None:
                on_resume(extra)
        if self.logger is not None:
            self.logger.rewind(self.units_done, key=self.unit)
        start = self.units_done
        show = self.progress and self.ctx.is_main
        bar = tqdm(total=total, initial=start, desc=self.desc, disable=not show, leave=False)
        sums: dict[str, torch.Tensor] = {}
        steps_in_window = 0
        t0 = time.perf_counter()
        it = iter(batches(start * self.steps_per_unit, total * self.steps_per_unit))
        for unit in range(start, total):
            if before_unit is not None:
                before_unit(unit)
            for _ in range(self.steps_per_unit):
                rec = self.step(next(it))
                for k, v in rec.items():
                    sums[k] = sums[k] + v if k in sums else v.clone()
                steps_in_window += 1
            self.units_done = done = unit + 1
            bar.update(1)
            last = done == total
            evaluating = evaluate is not None and (last or (eval_every and done % eval_every == 0))
            if last or evaluating or done % log_every == 0:
                record = self._flush(sums, steps_in_window)
                sums, steps_in_window = {}, 0
                self._append(record, self._series["step"])
                if evaluating:
                    scores = evaluate()
                    self._append({f"eval_{self.unit}": done, **scores}, self._series["eval"])
                    record.update(scores)
                record["seconds"] = time.perf_counter() - t0
                self.history.setdefault("seconds", []).append(record["seconds"])
                bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()
                                 if k in ("loss", "train_loss", "eval_accuracy")})
                if self.logger is not None and (evaluating or evaluate is None):
                    self.logger.log(**record)
            if self.checkpointer is not None and (last or self.checkpointer.should_save(done)):
                self.save(extra_state() if extra_state is not None else None)
                if on_save is not None and self.ctx.is_main:
                    on_save(done)
        bar.close()
        return self.history

    def _append(self, record: dict[str, float], series: set[str]) -> None:
        """Append a record to the history. ``series`` (the step records' keys, or the evaluations') keeps
        its lists aligned: keys first seen now are padded with NaN, absent ones get NaN."""
        n = len(self.history.get(next(iter(record)), []))
        for k, v in record.items():
            series.add(k)
            self.history.setdefault(k, [math.nan] * n).append(v)
        for k in series - record.keys():
            if len(self.history[k]) == n:
                self.history[k].append(math.nan)

    def _flush(self, sums: dict[str, torch.Tensor], n: int) -> dict[str, float]:
        stacked = torch.stack([v.reshape(()).double() for v in sums.values()]) / n
        if self.ctx.distributed:  # every rank's means, averaged: the global batch's (ranks share the keys)
            dist.all_reduce(stacked)
            stacked /= self.ctx.world_size
        means = dict(zip(sums, stacked.tolist()))  # one device sync for all metrics
        objective = means.pop("objective")
        if not math.isfinite(objective):
            what = ", ".join([k for k, v in means.items() if not math.isfinite(v)] or ["the loss"])
            if callable(self.divergence_hint):
                raise RuntimeError(self.divergence_hint(self.units_done, f"{what} non-finite"))
            raise RuntimeError(f"{what} became non-finite by {self.unit} {self.units_done}: "
                               f"{self.divergence_hint}")
        return {self.unit: self.units_done, **means}
