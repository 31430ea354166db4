"""The LSeg system: semantic segmentation whose classifier is text (Li et al., ICLR 2022).

Registers `lseg`: the model (a DPT decoder on a CLIP image tower, labels embedded by the frozen CLIP
text tower), its presets, the per-pixel cross-entropy task, the `segmentation` evaluator, the
`shapes` recipe, the segmenter behind `clipforge segment` and the zero-shot fold study `clipforge study lseg`.
Every run builds on a CLIP: `clipforge train lseg --clip NAME|PATH` (default: `shapes`).
"""

from __future__ import annotations

from ...registry import Evaluator, System, register_system
from .cli import STUDIES
from .infer import evaluate_segmentation, segment
from .model import LSeg, LSegConfig, describe
from .presets import PRESETS
from .recipes import RECIPES
from .task import LSegOptions, LSegTask

EVALUATORS = {
    "segmentation": Evaluator(
        "segmentation",
        "mIoU, per-class IoU, pixel accuracy and FB-IoU on images with class masks (LSeg models); "
        "with --pred/--gt/--classes instead of --model, scores PNG predictions",
        evaluate_segmentation,
        options={
            "--labels": {"default": None, "help": "label texts, one per class (default: the data's class names)"},
            "--classes": {"default": None, "help": "segmentation: class-name list (one per line; line i = value i)"},
            "--max-images": {"type": int, "default": None, "help": "score only the first N images"},
        },
    )
}

SYSTEM = register_system(
    System(
        name="lseg",
        description="language-driven semantic segmentation: per-pixel embeddings classified by label text",
        model=LSeg,
        config=LSegConfig,
        task=LSegTask,
        options=LSegOptions,
        presets=PRESETS,
        default_preset="lseg-shapes",
        evaluators=EVALUATORS,
        recipes=RECIPES,
        segmenter=segment,
        studies=STUDIES,
        sample_data="synthetic:n=64",
        describe=describe,
        from_clip=LSeg.from_clip,
        default_clip="shapes",
    )
)

__all__ = ["SYSTEM", "LSeg", "LSegConfig", "LSegOptions", "LSegTask"]
