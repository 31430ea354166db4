"""The ViLD system: open-vocabulary detection by distilling CLIP (Gu et al., ICLR 2022).

Registers `vild`: the detector (CLIP image tower as backbone, FPN, class-agnostic RPN and box head, region
embeddings classified by frozen CLIP text embeddings plus a learned background), its presets, the task
(RPN + box losses, ViLD-text and ViLD-image), the `detection` evaluator (COCO AP, base/novel), the
detector behind `clipforge detect`, the `shapes-text` and `shapes` recipes and `clipforge study vild`.
Every run builds on a CLIP: `clipforge train vild --clip NAME|PATH` (default: `shapes`).
"""

from __future__ import annotations

from ...registry import Evaluator, System, register_system
from .cli import STUDIES
from .infer import detect, evaluate_detection
from .model import ViLD, ViLDConfig, describe
from .presets import PRESETS
from .recipes import RECIPES
from .task import ViLDOptions, ViLDTask

EVALUATORS = {
    "detection": Evaluator(
        "detection",
        "COCO box AP (the 12 COCO numbers, per-class AP; with --novel, base and novel AP) on synthetic scenes or a "
        "COCO instances file; with --pred/--gt instead of --model, scores COCO results files",
        evaluate_detection,
        options={
            "--labels": {"default": None, "help": "label texts, one per class (default: the data's class names)"},
            "--max-images": {"type": int, "default": None, "help": "score only the first N images"},
            "--novel": {"default": None, "help": "detection: comma-separated novel categories (base/novel AP)"},
        },
    )
}

SYSTEM = register_system(
    System(
        name="vild",
        description="open-vocabulary detection: region embeddings classified by CLIP text, distilled from CLIP",
        model=ViLD,
        config=ViLDConfig,
        task=ViLDTask,
        options=ViLDOptions,
        presets=PRESETS,
        default_preset="vild-shapes",
        evaluators=EVALUATORS,
        recipes=RECIPES,
        studies=STUDIES,
        sample_data="synthetic:n=64",
        describe=describe,
        from_clip=ViLD.from_clip,
        default_clip="shapes",
        detector=detect,
    )
)

__all__ = ["SYSTEM", "ViLD", "ViLDConfig", "ViLDOptions", "ViLDTask"]
