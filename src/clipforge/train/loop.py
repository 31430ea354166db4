"""One generic training loop.

A task supplies `forward(model, batch) -> dict[str, Tensor]` (per-sample outputs with a leading batch
dimension, and scalars) and `loss(outputs) -> dict[str, Tensor]` of named losses (summed to the
objective). Splitting the two lets the loop accumulate gradients *exactly* for batch-coupled losses
such as the contrastive loss: outputs of all micro-batches are computed without gradients, the loss
is back-propagated to those cached outputs once, and each micro-batch is then re-run and
back-propagated with its slice of the cached gradient (gradient caching, Gao et al. 2021).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from .. import distributed as D
from ..errors import ClipforgeError, TrainingError
from ..precision import resolve_precision
from .checkpoint import (
    check_resumable,
    check_run_folder,
    load_training_state,
    remove_stale_temporaries,
    rng_state,
    save_training_state,
    set_rng_state,
)
from .config import TrainConfig
from .optim import build_optimizer, cosine_schedule
from .report import MetricsLog, plot_curves
from .step import Stepper
from .task import Task


@dataclass
class TrainResult:
    """What a finished run reports (`history` holds every metrics line)."""

    step: int
    final_loss: float
    seconds: float
    samples_per_s: float
    skipped_samples: int
    skipped_steps: int
    data_wait_frac: float
    history: list[dict[str, Any]] = field(default_factory=list)
    precision: str = "fp32"  # what the run computed in ("auto" resolved for its device)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _next_batch(it: Iterator[dict[str, Any]], workers: int) -> dict[str, Any]:
    """The next batch; a data error raised in a loader worker comes back as its one-line message, and
    a worker that died is reported instead of surfacing as a bare DataLoader error."""
    try:
        return next(it)
    except ClipforgeError as e:
        message = str(e)
        if "Original Traceback" in message:  # re-raised from a worker: keep the original message
            message = message.rstrip().splitlines()[-1].partition(": ")[2] or message
        raise type(e)(message) from None
    except RuntimeError as e:
        if "DataLoader worker" in str(e):
            raise TrainingError(
                f"a data-loading worker died ({str(e).splitlines()[0]}); run with --workers 0 to see its error "
                f"in the main process (it ran with --workers {workers})"
            ) from None
        raise


def _total_steps(cfg: TrainConfig, dataset: Dataset) -> int:
    if cfg.steps is not None:
        return cfg.steps
    if isinstance(dataset, IterableDataset):
        raise ClipforgeError("--epochs needs a dataset of known size; give --steps for WebDataset streams")
    return max(1, math.ceil(cfg.epochs * len(dataset) / cfg.batch_size))


class _Trainer:
    """One run: optimiser, schedule, loader, checkpoints and metrics around a task."""

    def __init__(self, task: Task, dataset: Dataset, cfg: TrainConfig, evaluate: Any = None) -> None:
        from ..data.loader import make_loader

        self.task, self.cfg, self.evaluate = task, cfg, evaluate
        if cfg.accum_steps > 1:
            task.check_accumulation()
        self.rank, self.world, self.device = D.init_distributed()
        if cfg.batch_size % (self.world * cfg.accum_steps):
            raise ClipforgeError(
                f"batch size {cfg.batch_size} must divide by world size x accum_steps "
                f"({self.world} x {cfg.accum_steps})"
            )
        torch.manual_seed(cfg.seed)
        self.out = Path(cfg.out)
        self.ckpt_path = self.out / "checkpoints" / "last.pt"
        check_run_folder(self.out, self.ckpt_path, cfg.resume, cfg.overwrite)
        self.total = _total_steps(cfg, dataset)
        self.model = task.model.to(self.device)
        task.configure(self.model)
        if cfg.sync_batchnorm:
            if self.device.type == "cpu":
                raise ClipforgeError("--sync-batchnorm needs GPUs (PyTorch's SyncBatchNorm does not run on CPUs)")
            self.model = task.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if cfg.compile:
            task.compile(self.model)
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model
        self.optimizer = build_optimizer(
            self.model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps, cfg.optimizer, task.lr_scale
        )
        warmup = cfg.warmup if cfg.warmup is not None else min(500, max(1, self.total // 20))
        self.scheduler = cosine_schedule(self.optimizer, warmup, self.total)
        self.step, self.skipped_samples, self.skipped_steps = 0, 0, 0
        self.precision = resolve_precision(cfg.precision, self.device)
        self.stepper = Stepper(task, self.ddp, cfg, self.device, self.precision)
        if self.rank == 0:
            remove_stale_temporaries(self.ckpt_path)  # from a run killed while writing
            if cfg.overwrite:  # every check has passed: the earlier run's checkpoint goes
                self.ckpt_path.unlink(missing_ok=True)
        if cfg.resume:
            self._restore()
        self.metrics = MetricsLog(
            self.out / "metrics.jsonl",
            enabled=self.rank == 0,
            truncate_after=self.step,
            report_to=cfg.report_to,
            run_config=cfg.to_dict(),
        )
        self.loader = make_loader(
            dataset, cfg.batch_size, task.collate, self.rank, self.world, cfg.seed, self.step, cfg.workers
        )

    def _identity(self) -> dict[str, Any]:
        """The system name, model config and task options stored with checkpoints (None where unknown)."""
        from .. import settings
        from ..registry import system_of

        try:
            system = system_of(self.model).name
        except ClipforgeError:
            system = None
        config, options = getattr(self.model, "config", None), self.task.options
        return {
            "system": system,
            "model_config": settings.to_dict(config) if dataclasses.is_dataclass(config) else None,
            "options": settings.to_dict(options) if dataclasses.is_dataclass(options) else None,
        }

    def _restore(self) -> None:
        from ..checkpoints import load_state_dict_checked

        state = load_training_state(self.ckpt_path)
        for note in check_resumable(state, self.cfg.to_dict(), path=self.ckpt_path, **self._identity()):
            if self.rank == 0:
                print(f"note: resuming with {note}", file=sys.stderr)
        load_state_dict_checked(self.model, state["model"], str(self.ckpt_path))
        saved = [g.get("initial_lr", g.get("lr")) for g in state["optimizer"].get("param_groups", [])]
        now = [g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups]
        if len(saved) == len(now) and any(abs(a - b) > 1e-12 * max(abs(a), abs(b)) for a, b in zip(saved, now)):
            raise TrainingError(
                f"{self.ckpt_path}: its parameter groups learn at {saved}, this run's at {now} (a task option that "
                "scales learning rates changed); resume with the same options, or pass --overwrite to start over"
            )
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:  # other parameters are being trained than in the checkpoint
            raise TrainingError(
                f"{self.ckpt_path}: its optimiser state does not fit the parameters this run trains ({e}); resume "
                "with the same options, or pass --overwrite to start over"
            ) from None
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.stepper.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.skipped_samples = int(state.get("skipped_samples", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        set_rng_state(state["rng"])

    def _save(self) -> None:
        if self.rank == 0:
            save_training_state(
                self.ckpt_path,
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.stepper.scaler.state_dict(),
                    "step": self.step,
                    "rng": rng_state(),
                    "samples_seen": self.step * self.cfg.batch_size,
                    "skipped_samples": self.skipped_samples,
                    "skipped_steps": self.skipped_steps,
                    "train_config": json.dumps(self.cfg.to_dict()),
                    **{("task_options" if k == "options" else k): v for k, v in self._identity().items()},
                },
            )
        if self.world > 1:
            torch.distributed.barrier()

    def _optimiser_step(self, losses: dict[str, torch.Tensor]) -> tuple[float, float | None]:
        total = D.mean_across_ranks(sum(losses.values()).float())
        if not torch.isfinite(total):
            self.optimizer.zero_grad(set_to_none=True)
            if self.cfg.on_nan == "stop":
                raise TrainingError(
                    f"loss is {total.item()} at step {self.step + 1}; stopping without saving (the last good "
                    f"checkpoint, if any, is {self.ckpt_path}). Lower the learning rate, use --precision fp32, "
                    "or pass --on-nan skip to skip such steps."
                )
            self.skipped_steps += 1
            return float("nan"), None
        params = [p for p in self.model.parameters() if p.grad is not None]
        scaler = self.stepper.scaler
        scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip or float("inf"))
        scaler.step(self.optimizer)  # skipped (and the scale lowered) where fp16 gradients overflowed
        scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.task.after_step(self.model)
        return total.item(), float(norm)

    def run(self) -> TrainResult:
        from tqdm import tqdm

        cfg, start_step, t_start = self.cfg, self.step, time.perf_counter()
        bar = tqdm(
            total=self.total,
            initial=self.step,
            disable=not cfg.progress or self.rank != 0,
            unit="step",
            dynamic_ncols=True,
        )
        it: Iterator[dict[str, Any]] | None = iter(self.loader)
        last_ckpt, wait, window_t, window_n, loss = time.perf_counter(), 0.0, time.perf_counter(), 0, float("nan")
        window_loss = 0.0
        try:
            if self.step == 0 and self.evaluate is not None:
                self._evaluate()  # the starting point, and a bad validation setup fails now, not after training
            self.task.train_mode(self.model)
            while self.step < self.total:
                t0 = time.perf_counter()
                batch = _next_batch(it, cfg.workers)
                wait += time.perf_counter() - t0
                self.skipped_samples += int(batch.get("skipped", 0))
                self.task.step = self.step
                losses = self.stepper(_to(batch, self.device))
                loss, grad_norm = self._optimiser_step(losses)
                self.step += 1
                window_n += 1
                window_loss += loss
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total:
                    elapsed = time.perf_counter() - window_t
                    row, extra = self._log_row(
                        losses, window_loss / window_n, grad_norm, window_n * cfg.batch_size / elapsed, wait / elapsed
                    )
                    shown = {k: f"{v:.3g}" for k, v in extra.items() if isinstance(v, (int, float))}
                    bar.set_postfix(
                        loss=f"{loss:.3f}",
                        lr=f"{row['lr']:.2e}",
                        **shown,
                        **{"samples/s": f"{row['samples_per_s']:.0f}"},
                    )
                    window_t, window_n, wait, window_loss = time.perf_counter(), 0, 0.0, 0.0
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total:
                    self._evaluate()
                due = time.perf_counter() - last_ckpt >= cfg.checkpoint_every_s or (
                    cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0
                )
                if D.any_across_ranks(bool(due)):
                    self._save()
                    last_ckpt = time.perf_counter()
            bar.close()
            it = None  # stops the loader's workers before the final evaluation
            self._save()
            self._evaluate()
        finally:  # also when training fails: no progress bar, worker or log sink is left behind
            bar.close()
            it = None
            self.metrics.close()
            if cfg.compile:
                uncompile(self.model)
        if self.rank == 0:
            plot_curves(self.metrics.rows, self.out / "curves.png")
        seconds = time.perf_counter() - t_start
        done = self.step - start_step
        rows = self.metrics.rows
        return TrainResult(
            self.step,
            loss,
            seconds,
            done * cfg.batch_size / max(seconds, 1e-9),
            self.skipped_samples,
            self.skipped_steps,
            sum(r.get("data_wait_frac", 0) for r in rows) / max(1, len(rows)),
            rows,
            self.precision,
        )

    def _log_row(
        self,
        losses: dict[str, torch.Tensor],
        loss: float,
        grad_norm: float | None,
        samples_per_s: float,
        wait_frac: float,
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """The metrics line (also written to metrics.jsonl) and the task's own values in it.
        `loss` is the mean over the steps since the previous line."""
        row: dict[str, Any] = {
            "step": self.step,
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "samples_per_s": samples_per_s,
            "data_wait_frac": wait_frac,
            "skipped_samples": self.skipped_samples,
            "skipped_steps": self.skipped_steps,
        }
        if len(losses) > 1:
            row.update({f"loss/{k}": D.mean_across_ranks(v.float()).item() for k, v in losses.items()})
        if grad_norm is not None:
            row["grad_norm"] = grad_norm
        row["param_norm"] = float(torch.sqrt(sum((p.detach().float() ** 2).sum() for p in self.model.parameters())))
        extra = self.task.log_values(self.model)
        row.update(extra)
        self.metrics.append(row)
        return row, extra

    def _evaluate(self) -> None:
        if self.evaluate is None or self.rank != 0:
            return
        self.model.eval()
        with torch.no_grad():
            results = self.evaluate(self.model)
        self.task.train_mode(self.model)
        self.metrics.append({"step": self.step, **{f"eval/{k}": v for k, v in results.items()}})


def uncompile(model: torch.nn.Module) -> None:
    """Undo `Task.compile`: drop the compiled `forward` attributes, so the trained model copies, pickles and
    runs as a plain module again (a deep copy would otherwise share the original's compiled forward)."""
    for m in model.modules():
        fn = m.__dict__.get("forward")
        if fn is not None and hasattr(fn, "_torchdynamo_orig_callable"):
            del m.__dict__["forward"]


def train(task: Task, dataset: Dataset, cfg: TrainConfig, evaluate: Any = None) -> TrainResult:
    """Train `task.model` on `dataset` as `cfg` says; runs under torchrun as well as in one process.

    `evaluate(model) -> dict[str, float]`, if given, runs every `cfg.eval_every` steps and at the end.
    """
    return _Trainer(task, dataset, cfg, evaluate).run()
