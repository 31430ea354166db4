"""`clipforge study efficiency`: the CLIP paper's efficiency comparison, run on your data.

Trains captioning, bag-of-words prediction, bag-of-words contrastive and full CLIP objectives on the
same image tower (same preset, same initial weights, same data order, same budget of images) with the
shared trainer, evaluates zero-shot accuracy at fixed numbers of images seen, and reports how many
images each objective needs to reach a given accuracy, with the paper's ratios beside them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError
from ...eval.datasets import labelled_dataset
from ...eval.features import image_features
from ...eval.run import write_json
from ...eval.zeroshot import zero_shot_classifier
from ...presets import get_config
from ...train import TrainConfig, train
from .objectives import Vocabulary, build_objective
from .task import image_text_dataset

# order of the paper's figure, slowest first; the paper's speed-up of each over the one before it
ORDER = ("captioning", "bow-prediction", "bow-contrastive", "clip")
PAPER_SPEEDUP = {"bow-prediction": 3.0, "bow-contrastive": 4.0}
LABELS = {
    "captioning": "transformer captioning",
    "bow-prediction": "bag-of-words prediction",
    "bow-contrastive": "bag-of-words contrastive",
    "clip": "CLIP (transformer text tower)",
}
DEFAULT_EVAL = {
    "heldout": "synthetic:label=composite,split=heldout,n=400",
    "seen": "synthetic:label=composite,split=val,n=400",
}


def zero_shot_logits(
    model: torch.nn.Module, feats: torch.Tensor, classnames: Sequence[str], templates: Any
) -> torch.Tensor:
    """(N, C) class scores of any objective's model: its own scorer, or CLIP's classifier by embeddings."""
    if hasattr(model, "zero_shot_logits"):
        return model.zero_shot_logits(feats, classnames, templates)
    return zero_shot_classifier(model, classnames, templates).logits(feats)


def images_to_reach(curve: Sequence[tuple[int, float]], target: float) -> float | None:
    """Images seen when the curve (images, accuracy) first reaches `target`, interpolated linearly
    between evaluations; None if it never does."""
    prev = None
    for images, acc in curve:
        if acc >= target:
            if prev is None or prev[1] >= target:
                return float(images)
            (i0, a0) = prev
            return i0 + (target - a0) / (acc - a0) * (images - i0)
        prev = (images, acc)
    return None


def efficiency_ratios(
    curves: dict[str, list[tuple[int, float]]], chance: float, margin: float = 0.05
) -> list[dict[str, Any]]:
    """For each consecutive pair of ORDER present in `curves` (slower, faster): images each needs to
    reach the accuracy both attain (the lower of their best accuracies), and slower / faster.
    A pair whose common accuracy is within `margin` of chance is reported as not measurable; if
    the slower one's best is below the faster's, its ratio is also reported as a lower bound."""
    names = [n for n in ORDER if n in curves]
    out = []
    for slow, fast in zip(names, names[1:]):
        best_slow, best_fast = max(a for _, a in curves[slow]), max(a for _, a in curves[fast])
        target = min(best_slow, best_fast)
        row: dict[str, Any] = {
            "slower": slow,
            "faster": fast,
            "target_accuracy": target,
            "paper_speedup": PAPER_SPEEDUP.get(fast),
        }
        if target < chance + margin:
            row.update(
                ratio=None,
                note=f"not measurable: {LABELS[slow] if best_slow < best_fast else LABELS[fast]} "
                f"stays within {margin:.0%} of chance ({chance:.1%})",
            )
        else:
            n_slow, n_fast = images_to_reach(curves[slow], target), images_to_reach(curves[fast], target)
            row.update(images_slower=n_slow, images_faster=n_fast, ratio=n_slow / max(n_fast, 1.0))
            if not n_slow or not n_fast:  # the untrained model already scores the common accuracy
                untrained = LABELS[slow] if not n_slow else LABELS[fast]
                row.update(ratio=None, note=f"not measurable: {untrained} scores {target:.1%} before training")
            elif best_fast > best_slow + 0.02:
                row["note"] = (
                    f"{LABELS[slow]} peaks at {best_slow:.1%}; at higher accuracies the gap is wider "
                    f"({LABELS[fast]} reaches {best_fast:.1%})"
                )
        out.append(row)
    return out


def _caption_sample(dataset: Any, n: int) -> list[str]:
    """Up to n training captions, for the vocabulary (file sources: without opening any image)."""
    if hasattr(dataset, "__len__") and hasattr(dataset, "read"):
        idx = np.random.default_rng(0).permutation(len(dataset))[:n]
        if hasattr(dataset, "pairs"):
            return [dataset.pairs[int(i)][1] for i in idx]
        return [dataset.read(int(i))[1] for i in idx]
    caps = []
    for item in dataset:
        caps.append(item["caption"])
        if len(caps) >= n:
            break
    return caps


def run_efficiency_study(
    out: str | Path = "study-efficiency",
    data: str = "synthetic",
    model: str = "tiny-rn",
    images: int = 76_800,
    batch_size: int = 128,
    evals: int = 8,
    lr: float = 1e-3,
    objectives: Sequence[str] = ORDER,
    eval_data: dict[str, str] | None = None,
    templates: Any = "synthetic1",
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Train each objective on `images` images of `data` and write curves, table and ratios to `out`."""
    unknown = [o for o in objectives if o not in ORDER]
    if unknown:
        raise ConfigError(f"unknown objective(s) {', '.join(unknown)}; use {', '.join(ORDER)}")
    if eval_data is None:
        if not data.startswith("synthetic"):
            raise ConfigError(
                "zero-shot evaluation needs labelled images: pass --eval NAME=SPEC (a class-folder "
                "root, digits, or synthetic:label=...) when training on your own data"
            )
        eval_data = DEFAULT_EVAL
    steps = max(1, images // batch_size)
    out = Path(out)
    config = get_config(model)
    size = config.vision.image_size
    dataset = image_text_dataset(data, config, seed)
    vocab = Vocabulary.from_captions(_caption_sample(dataset, 5000), context_length=config.text.context_length)
    evalsets = {name: labelled_dataset(spec, "test", size) for name, spec in eval_data.items()}
    primary = next(iter(evalsets))
    print(
        f"efficiency study: {len(objectives)} objectives x {steps} steps of {batch_size} images on {data} "
        f"({model}, vocabulary {vocab.size} tokens); zero-shot on {', '.join(evalsets)} "
        f"every {max(1, steps // evals)} steps"
    )

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        res = {}
        for name, ds in evalsets.items():
            feats = image_features(m, ds, precision="auto")
            logits = zero_shot_logits(m, feats, ds.classnames, templates)
            res[f"zeroshot_{name}"] = (logits.argmax(1) == torch.tensor(ds.labels)).float().mean().item()
        return res

    results: dict[str, Any] = {}
    for name in objectives:
        task = build_objective(name, config, vocab, seed)
        print(f"[{name}] {LABELS[name]}: {sum(p.numel() for p in task.model.parameters()) / 1e6:.2f}M parameters")
        cfg = TrainConfig(
            out=str(out / name),
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            workers=workers,
            seed=seed,
            overwrite=True,  # a study's folder holds one run of each objective: the latest
            progress=progress,
            log_every=max(1, steps // 50),
            eval_every=max(1, steps // evals),
        )
        t0 = time.perf_counter()
        res = train(task, dataset, cfg, evaluate=evaluate)
        seconds = time.perf_counter() - t0
        rows = [r for r in res.history if any(k.startswith("eval/") for k in r)]  # from step 0 (untrained)
        curves = {k: [(r["step"] * batch_size, r[f"eval/zeroshot_{k}"]) for r in rows] for k in evalsets}
        results[name] = {
            "curves": curves,
            "seconds": seconds,
            "final_loss": res.final_loss,
            "parameters": sum(p.numel() for p in task.model.parameters()),
        }
        print(f"[{name}] {seconds:.0f} s; zero-shot " + ", ".join(f"{k} {c[-1][1]:.1%}" for k, c in curves.items()))

    chance = {k: 1 / len(ds.classnames) for k, ds in evalsets.items()}
    ratios = {k: efficiency_ratios({n: r["curves"][k] for n, r in results.items()}, chance[k]) for k in evalsets}
    report = {
        "data": data,
        "model": model,
        "images_per_objective": steps * batch_size,
        "batch_size": batch_size,
        "templates": templates,
        "eval_data": eval_data,
        "primary": primary,
        "chance": chance,
        "vocabulary_size": vocab.size,
        "objectives": results,
        "ratios": ratios,
    }
    report["findings"] = _findings(report)
    write_json(report, out / "report.json")
    (out / "report.md").write_text(_markdown(report), encoding="utf-8")
    _plot(report, out / "curves.png")
    print(_markdown(report))
    return report


def _findings(report: dict[str, Any]) -> list[str]:
    out = []
    paper = [n for n in ORDER[:3] if n in report["objectives"]]  # the paper's figure: its three objectives
    for evalset, rows in report["ratios"].items():
        final = {n: r["curves"][evalset][-1][1] for n, r in report["objectives"].items()}
        if len(paper) > 1:
            ok = all(final[a] < final[b] for a, b in zip(paper, paper[1:]))
            out.append(
                f"{evalset}: final zero-shot accuracy "
                + ", ".join(f"{n} {final[n]:.1%}" for n in final)
                + f". The paper's ordering ({' < '.join(paper)}) {'reproduces' if ok else 'does not reproduce'}"
                " at this scale."
            )
        for r in rows:
            if r.get("ratio") is None:
                out.append(f"{evalset}: {r['faster']} vs {r['slower']}: {r['note']}.")
                continue
            paper_txt = f" (paper: about {r['paper_speedup']:g}x fewer)" if r["paper_speedup"] else ""
            ratio = r["ratio"]
            how = f"{ratio:.2f}x fewer images" if ratio >= 1 else f"{1 / ratio:.2f}x more images"
            out.append(
                f"{evalset}: to reach {r['target_accuracy']:.1%}, {r['faster']} needed {r['images_faster']:,.0f} "
                f"images and {r['slower']} {r['images_slower']:,.0f}: {r['faster']} needs {how}{paper_txt}."
            )
    return out


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Efficiency study: {report['data']}, {report['model']}, {report['images_per_objective']:,} images "
        "per objective",
        "",
    ]
    for evalset in report["chance"]:
        lines += [
            f"## Zero-shot top-1 on {evalset} ({report['eval_data'][evalset]}; chance {report['chance'][evalset]:.1%})",
            "",
        ]
        names = list(report["objectives"])
        xs = [x for x, _ in report["objectives"][names[0]]["curves"][evalset]]
        lines.append("| images seen | " + " | ".join(names) + " |")
        lines.append("|---:|" + "---:|" * len(names))
        for i, x in enumerate(xs):
            lines.append(
                f"| {x:,} | "
                + " | ".join(f"{report['objectives'][n]['curves'][evalset][i][1]:.1%}" for n in names)
                + " |"
            )
        lines += [
            "",
            "| faster vs slower | accuracy both reach | images (slower) | images (faster) | measured | paper |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in report["ratios"][evalset]:
            paper = f"{r['paper_speedup']:g}x" if r["paper_speedup"] else "-"
            if r.get("ratio") is None:
                lines.append(f"| {r['faster']} vs {r['slower']} | {r['target_accuracy']:.1%} | - | - | n/a | {paper} |")
            else:
                lines.append(
                    f"| {r['faster']} vs {r['slower']} | {r['target_accuracy']:.1%} | "
                    f"{r['images_slower']:,.0f} | {r['images_faster']:,.0f} | {r['ratio']:.2f}x | {paper} |"
                )
        lines.append("")
    lines += ["## Findings", ""] + [f"- {f}" for f in report["findings"]]
    lines += [
        "",
        "Training time per objective: "
        + ", ".join(f"{n} {r['seconds']:.0f} s" for n, r in report["objectives"].items()),
        "",
    ]
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(report["chance"])
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    for ax, evalset in zip(axes[0], sets):
        for name, res in report["objectives"].items():
            xs, ys = zip(*res["curves"][evalset])
            ax.plot(xs, [100 * y for y in ys], marker="o", ms=3, label=LABELS[name])
        ax.axhline(100 * report["chance"][evalset], color="grey", ls=":", label="chance")
        ax.set_xlabel("images seen")
        ax.set_ylabel("zero-shot top-1 (%)")
        ax.set_title(f"{evalset}: {report['eval_data'][evalset]}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"efficiency of pre-training objectives ({report['model']}, {report['data']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
