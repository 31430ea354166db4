"""The CLIP system: contrastive language-image pre-training (Radford et al., 2021).

Registers `clip` with the model (`clipforge.models.CLIP`), its presets, the contrastive task, the
evaluators behind `clipforge eval`, the recipes of `clipforge train clip --recipe`, the commands
`demo`, `zeroshot` and `quickstart`, the efficiency study, and the OpenAI / OpenCLIP / Hugging Face
checkpoint formats.
"""

from __future__ import annotations

from ...config import CLIPConfig
from ...models import CLIP
from ...presets import ALIASES, PRESETS
from ...registry import System, register_system
from .cli import STUDIES, VERBS
from .evaluate import EVALUATORS
from .formats import export_hf, export_openai, import_clip
from .pretrained import PRETRAINED
from .recipes import RECIPES
from .task import CLIPOptions, CLIPTask


def _describe(c: CLIPConfig) -> str:
    return f"{c.vision.kind:<6} image {c.vision.image_size:<4} embed {c.embed_dim:<5} act {c.vision.act}"


SYSTEM = register_system(
    System(
        name="clip",
        description="contrastive language-image pre-training: an image and a text tower in one embedding space",
        model=CLIP,
        config=CLIPConfig,
        task=CLIPTask,
        options=CLIPOptions,
        presets=PRESETS,
        aliases=ALIASES,
        default_preset="tiny-vit",
        evaluators=EVALUATORS,
        recipes=RECIPES,
        verbs=VERBS,
        studies=STUDIES,
        exporters={"hf": export_hf, "openai": export_openai},
        importers=(import_clip,),
        sample_data="synthetic:n=256,size=32",
        describe=_describe,
        pretrained=PRETRAINED,
    )
)

__all__ = ["SYSTEM", "CLIPOptions", "CLIPTask"]
