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

    def __init__(self, path: Path, enabled: bool = True, truncate_after: int | None = None) -> None:
        self.path, self.enabled, self.rows = path, enabled, []
        if not enabled:
            return
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


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Loss, temperature and learning rate against step, plus any eval/ metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r.get("loss") is not None]
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    panels = [("loss", "contrastive loss"), ("scale", "logit scale exp(t)"), ("lr", "learning rate")]
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
