"""Metrics as JSON lines (one object per logged step) and a PNG of the curves."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .._io import atomic_write
from ..errors import TrainingError


class MetricsLog:
    """Appends rows to `path`. On resume, rows after the resumed step (logged by the run that
    crashed after its last checkpoint) are dropped so each step appears once."""

    def __init__(
        self,
        path: Path,
        enabled: bool = True,
        truncate_after: int | None = None,
        report_to: str = "",
        run_config: dict[str, Any] | None = None,
    ) -> None:
        self.path, self.enabled, self.rows = path, enabled, []
        self.sinks: list[Any] = []
        if not enabled:
            return
        self.sinks = [
            _sink(name.strip(), path.parent, run_config or {}) for name in report_to.split(",") if name.strip()
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and truncate_after is not None and truncate_after > 0:
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash
                    continue
                if row.get("step", 0) <= truncate_after:
                    self.rows.append(row)
        elif path.exists():
            path.unlink()
        path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def append(self, row: dict[str, Any]) -> None:
        """Write one metrics line (non-finite floats become null)."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.rows.append(clean)
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(clean) + "\n")
        except OSError as e:
            raise TrainingError(
                f"could not append to {self.path} ({e.strerror or e}); free space, then rerun with --resume"
            ) from None
        numbers = {k: v for k, v in clean.items() if k != "step" and isinstance(v, (int, float))}
        for sink in self.sinks:
            sink(int(clean.get("step", 0)), numbers)

    def close(self) -> None:
        """Flush and close the extra sinks (TensorBoard, Weights & Biases)."""
        for sink in self.sinks:
            getattr(sink, "close", lambda: None)()


class _TensorBoard:
    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainingError(
                "--report-to tensorboard needs the tensorboard package: pip install tensorboard"
            ) from None
        self.writer = SummaryWriter(str(folder / "tensorboard"))

    def __call__(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key if "/" in key else f"train/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, folder: Path, run_config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise TrainingError("--report-to wandb needs the wandb package: pip install wandb") from None
        self.run = wandb.init(project="clipforge", dir=str(folder), config=run_config, name=folder.name)

    def __call__(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def _sink(name: str, folder: Path, run_config: dict[str, Any]) -> Any:
    return _TensorBoard(folder) if name == "tensorboard" else _WandB(folder, run_config)


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Loss, temperature and learning rate against step, plus any eval/ metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r.get("loss") is not None]
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    panels = [("loss", "training loss"), ("scale", "logit scale exp(t)"), ("lr", "learning rate")]
    panels = [p for p in panels if any(p[0] in r for r in train)]
    eval_keys = sorted({k for r in evals for k in r if k.startswith("eval/")})
    n = len(panels) + (1 if eval_keys else 0)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(4.2 * max(n, 1), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        pts = [(r["step"], r[key]) for r in train if r.get(key) is not None]
        ax.plot(*zip(*pts)) if pts else None
        ax.set_title(title)
        ax.set_xlabel("step")
    if eval_keys:
        ax = axes[0][len(panels)]
        for key in eval_keys:
            pts = [(r["step"], r[key]) for r in evals if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=key[5:])
        ax.set_title("evaluation")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
