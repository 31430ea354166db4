"""Zero-shot classification the paper's way: every class name in every template, embeddings
normalised, averaged over templates, normalised again (ensembling in embedding space)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..tokenizer import tokenize


def _asset(name: str) -> list[str]:
    text = resources.files("clipforge").joinpath("assets", "templates", name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


# Templates for the synthetic world: phrasings that do not name a colour, size or position, so the
# same set works for shape, colour and composite labels.
SYNTHETIC_TEMPLATES = [
    "a {}.",
    "a photo of a {}.",
    "a picture showing one {}.",
    "a drawing of a {}.",
    "an image of a {}.",
    "there is a {} in the picture.",
    "a {} on a plain background.",
    "one {}.",
]


def _template_sets() -> dict[str, list[str]]:
    return {
        "openai80": _asset("openai_imagenet_80.txt"),  # the 80 ImageNet prompts of the CLIP paper
        "openai7": _asset("openai_imagenet_7.txt"),  # the 7-prompt subset the authors selected
        "photo": ["a photo of a {}."],  # the paper's single default prompt
        "bare": ["{}"],  # the class name alone
        "synthetic": SYNTHETIC_TEMPLATES,
        "synthetic1": ["a photo of a {}."],
        "digits": ['a photo of the number: "{}".'],  # CLIP's MNIST prompt
    }


TEMPLATE_SETS = _template_sets()


def load_templates(spec: str | Sequence[str]) -> list[str]:
    """A built-in set name, a text file with one template per line, or a list; each needs one `{}`."""
    if not isinstance(spec, str):
        templates = list(spec)
    elif spec in TEMPLATE_SETS:
        templates = TEMPLATE_SETS[spec]
    elif Path(spec).is_file():
        templates = [l.strip() for l in Path(spec).read_text(encoding="utf-8").splitlines() if l.strip()]
    else:
        raise ConfigError(f"unknown template set {spec!r}: not a file and not one of {', '.join(TEMPLATE_SETS)}")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad or not templates:
        raise ConfigError(f"each template needs exactly one '{{}}' for the class name; bad: {bad[:3]}")
    return templates


@dataclass
class ZeroShotClassifier:
    """One unit-norm text embedding per class; images are scored by scaled cosine similarity to each."""

    classnames: list[str]
    weights: torch.Tensor  # (C, E): one unit-norm embedding per class
    scale: float  # exp(logit_scale) of the model, for probabilities
    projection: torch.Tensor | None = None  # (E, E) applied to image embeddings first (see `debiased`)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """(N, C) scaled cosine similarities of (unnormalised) image embeddings to each class, on the
        features' device (the class embeddings move there: features are often kept on the CPU while the
        classifier was built on the model's GPU)."""
        feats = image_features.float()
        if self.projection is not None:
            feats = feats @ self.projection.to(feats.device)
        return self.scale * F.normalize(feats, dim=-1) @ self.weights.to(feats.device).T

    def debiased(self, nuisance: ZeroShotClassifier) -> ZeroShotClassifier:
        """This classifier with the directions that separate `nuisance`'s classes projected out of the
        image and class embeddings (Chuang et al., 2023, "Debiasing vision-language models via biased
        prompts"): e.g. shape classes debiased against colour prompts ignore the colour that the shape
        prompts absorbed in training. Zero-shot: only text prompts define the removed subspace."""
        centred = nuisance.weights - nuisance.weights.mean(dim=0)  # (K, E): differences between nuisance classes
        u, sv, _ = torch.linalg.svd(centred.T.double(), full_matrices=False)  # (E, K)
        basis = u[:, sv > sv.max() * 1e-6].float()  # orthonormal basis of their span
        proj = torch.eye(basis.shape[0], device=basis.device) - basis @ basis.T  # (E, E) onto the complement
        weights = F.normalize(self.weights @ proj, dim=-1)
        return ZeroShotClassifier(self.classnames, weights, self.scale, proj)

    def classify(self, image_features: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (label, probability) per image, probabilities from the softmax over all classes."""
        probs = self.logits(image_features).softmax(dim=-1)
        top = probs.topk(min(k, len(self.classnames)), dim=-1)
        return [
            [(self.classnames[i], p) for p, i in zip(ps.tolist(), ix.tolist())]
            for ps, ix in zip(top.values, top.indices)
        ]


@torch.no_grad()
def zero_shot_classifier(
    model: torch.nn.Module, classnames: Sequence[str], templates: str | Sequence[str] = "photo", batch_size: int = 256
) -> ZeroShotClassifier:
    """Build the classifier: encode every template with every class, normalise, average, normalise."""
    templates = load_templates(templates)
    device = next(model.parameters()).device
    ctx = getattr(getattr(model, "config", None), "text", None)
    context_length = ctx.context_length if ctx is not None else 77
    weights = []
    for name in classnames:
        texts = [t.format(name) for t in templates]
        embs = []
        for i in range(0, len(texts), batch_size):
            tokens = tokenize(texts[i : i + batch_size], context_length=context_length, truncate=True).to(device)
            embs.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
        weights.append(F.normalize(torch.cat(embs).mean(dim=0), dim=-1))
    scale = float(model.scale()) if hasattr(model, "scale") else 100.0
    return ZeroShotClassifier(list(classnames), torch.stack(weights), scale)
