"""What every study writes: report.json and report.md side by side (atomically), its claims rendered
the same way, and figures saved atomically."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write
from .run import write_json

VERDICTS = {True: "reproduced", False: "not reproduced", None: "not measurable here"}


def claim_lines(claims: Sequence[dict[str, Any]]) -> list[str]:
    """One Markdown bullet per claim: verdict, claim, the paper's figure and what was measured."""
    return [
        f"- **{VERDICTS[c['reproduced']]}**: {c['claim']}. Paper: {c['paper']}. Measured: {c['measured']}."
        for c in claims
    ]


def write_report(out: Path, report: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> None:
    """`out/report.json` and `out/report.md` (`markdown(report)`), each written atomically."""
    write_json(report, out / "report.json")
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(markdown(report), encoding="utf-8"))


def save_figure(fig: Any, path: Path, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    plt.close(fig)
