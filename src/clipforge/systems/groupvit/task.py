"""GroupViT training as a task for the generic trainer: images and captions only (no mask is ever
read), the image-text contrastive loss on the pooled segments, plus the multi-label contrastive loss
against prompts made from the caption's nouns ("a photo of a {noun}.")."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ...data import build_dataset
from ...data.loader import ImageTextCollate, trim_tokens
from ...data.synthetic import SHAPES
from ...distributed import is_distributed
from ...errors import ConfigError
from ...losses import clip_loss
from ...settings import setting
from ...train.task import Task
from ...transforms import ImageTransform
from .model import GroupViT, compose


@dataclass(frozen=True)
class GroupViTOptions:
    """Training options of the GroupViT system (`--set name=value`, or the flags they generate)."""

    multi_label: int = setting(3, help="prompts per image made from caption nouns (0: the contrastive loss only)")
    multi_label_weight: float = setting(1.0, help="weight of the multi-label contrastive loss")
    nouns: str = setting("", help="file of nouns (one per line) prompts are made from (default: the shapes world's)")
    prompt: str = setting("a photo of a {}.", help="the template a noun is put into")
    lock_text: bool = setting(True, help="freeze the text tower (a trained one from --clip: LiT-style)")
    local_loss: bool = setting(True, help="distributed: each rank scores its own rows against the global batch")
    segment_loss_weight: float = setting(
        0.0,
        help="weight of the segment-level noun loss (clipforge's, not the paper's; 0: off): each noun of the batch "
        "against every segment, each image's best-matching segment its positive; with the model's "
        "learned_background, also each segment against the nouns and the background",
    )

    group_balance_weight: float = setting(
        0.0,
        help="weight of the group balance term (clipforge's, not the paper's; 0: off): per image and grouping "
        "stage, log G minus the entropy of the image's share of tokens per group, so tokens spread over the groups "
        "instead of collapsing into a few",
    )

    affinity_weight: float = setting(
        0.0,
        help="weight of the pairwise colour affinity term (clipforge's, not the paper's; 0: off): neighbouring "
        "patches of like colour are pulled into the same final group and unlike ones apart (a BoxInst-style colour "
        "affinity with a Potts cost, on the composed hard assignments); images only, no mask",
    )
    affinity_sigma: float = setting(
        0.1, help="colour distance (RGB in [0, 1]) at which two patches' affinity falls to exp(-1/2)"
    )
    segment_prompts: str = setting(
        "nouns",
        help="what the segment loss puts into the prompt: nouns (the caption's bare nouns), phrases (its noun "
        "phrases, each noun with up to two words before it: 'a photo of a red circle.'; a phrase tells apart two "
        "objects of one image that the bare nouns cannot) or both",
    )
    segment_start: int = setting(
        0,
        help="optimiser step from which the segment loss counts (before it, it weighs 0: the paper's losses and the "
        "other terms shape the groups and their names first; the shapes recipe starts it at 1000, halfway)",
    )

    def __post_init__(self) -> None:
        weights = (
            self.multi_label, self.multi_label_weight, self.segment_loss_weight, self.group_balance_weight,
            self.affinity_weight, self.segment_start,
        )  # fmt: skip
        if min(weights) < 0:
            raise ConfigError(
                "multi_label, multi_label_weight, segment_loss_weight, group_balance_weight, affinity_weight and "
                "segment_start cannot be negative"
            )
        if self.segment_prompts not in ("nouns", "phrases", "both"):
            raise ConfigError(f"segment_prompts must be nouns, phrases or both, got {self.segment_prompts!r}")
        if self.affinity_sigma <= 0:
            raise ConfigError(f"affinity_sigma must be positive, got {self.affinity_sigma}")
        if self.prompt.count("{}") != 1:
            raise ConfigError(f"prompt needs exactly one '{{}}' for the noun, got {self.prompt!r}")


def load_nouns(spec: str) -> frozenset[str]:
    """The noun vocabulary: a file of one noun per line, or the synthetic world's shape names."""
    if not spec:
        return frozenset(SHAPES)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"nouns file {spec} does not exist (one noun per line)")
    nouns = frozenset(w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines() if w.strip())
    if not nouns:
        raise ConfigError(f"nouns file {spec} lists no nouns")
    return nouns


def caption_nouns(caption: str, nouns: frozenset[str]) -> list[str]:
    """The distinct words of `caption` that are in the noun vocabulary, in order."""
    return list(dict.fromkeys(w for w in re.findall(r"[a-z]+", caption.lower()) if w in nouns))


# words that end a noun phrase when reading back from its noun
_PHRASE_STOP = frozenset(
    "a an the and or of with without on in at to from by for near next beside above below under over is are "
    "one two three four five some this that these those its their his her".split()
)


def caption_phrases(caption: str, nouns: frozenset[str], modifiers: int = 2) -> list[str]:
    """The distinct noun phrases of `caption`, in order: each noun of the vocabulary with up to `modifiers`
    words before it, stopping at punctuation, articles, conjunctions and prepositions ("a large red circle
    and a star" -> ["large red circle", "star"])."""
    words = re.findall(r"[a-z]+|[^a-z\s]", caption.lower())
    phrases = []
    for i, w in enumerate(words):
        if w not in nouns:
            continue
        j = i
        while j > 0 and i - j < modifiers and words[j - 1].isalpha() and words[j - 1] not in _PHRASE_STOP:
            j -= 1
        phrases.append(" ".join(words[j : i + 1]))
    return list(dict.fromkeys(phrases))


def caption_prompts(caption: str, nouns: frozenset[str], k: int, template: str) -> list[str]:
    """`k` prompts for a caption: up to `k` distinct nouns of it (chosen by a seed drawn from the caption)
    each put into `template`; the caption itself pads the list where it has fewer nouns (as GroupViT's code)."""
    found = caption_nouns(caption, nouns)
    if len(found) > k:
        rng = np.random.default_rng(zlib.crc32(caption.encode()))
        found = [found[i] for i in sorted(rng.choice(len(found), k, replace=False))]
    return [template.format(w) for w in found] + [caption] * (k - len(found))


class GroupViTTask(Task):
    """Image-caption contrastive loss plus the multi-label loss against noun prompts."""

    def __init__(self, model: GroupViT, options: GroupViTOptions | None = None) -> None:
        super().__init__(model, options or GroupViTOptions())
        self._collate = ImageTextCollate(model.config.text.context_length)
        self._nouns = load_nouns(self.options.nouns)

    def dataset(self, spec: str, seed: int = 0) -> Dataset:
        """Image-caption pairs (no masks): synthetic world, CSV/TSV, caption folder or WebDataset shards."""
        c = self.model.config
        p = c.preprocess
        transform = ImageTransform(
            c.image_size, train=True, mean=p.mean, std=p.std, interpolation=p.interpolation, resize_mode=p.resize_mode
        )
        return build_dataset(spec, transform, c.image_size, seed=seed)[0]

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """Images, caption tokens, (B, K, L) tokens of each caption's K noun prompts; for the segment loss,
        (U, L) tokens of the batch's U distinct nouns' prompts and which caption has which (B, U)."""
        batch = self._collate(items)
        k = self.options.multi_label
        if k:
            prompts = [p for c in batch["captions"] for p in caption_prompts(c, self._nouns, k, self.options.prompt)]
            batch["prompts"] = self._tokens(prompts).reshape(len(items), k, -1)
        if self.options.segment_loss_weight:
            found = [self._segment_words(c) for c in batch["captions"]]
            vocab = sorted({w for words in found for w in words})
            if vocab:
                batch["nouns"] = self._tokens([self.options.prompt.format(w) for w in vocab])
                batch["noun_presence"] = torch.tensor([[w in words for w in vocab] for words in found])
        return batch

    def _segment_words(self, caption: str) -> list[str]:
        """What the segment loss prompts with for one caption (`segment_prompts`)."""
        how = self.options.segment_prompts
        words = caption_phrases(caption, self._nouns) if how != "nouns" else []
        if how != "phrases":
            words += [w for w in caption_nouns(caption, self._nouns) if w not in words]
        return words

    def check_accumulation(self) -> None:
        """Gradient accumulation splits the outputs by rows; the segment loss's nouns are the whole batch's."""
        if self.options.segment_loss_weight > 0:
            raise ConfigError(
                "--accum-steps > 1 cannot split the segment loss (segment_loss_weight): it scores every segment "
                "against the distinct nouns of the whole batch, which micro-batches do not share; use "
                "--accum-steps 1 with a batch that fits, or segment_loss_weight=0"
            )

    def _tokens(self, texts: list[str]) -> torch.Tensor:
        from ...tokenizer import get_tokenizer

        context = self._collate.context_length
        return trim_tokens(get_tokenizer()(texts, context_length=context, truncate=True), context)

    def configure(self, model: GroupViT) -> None:
        """Freeze the text tower if asked (default: a trained one from --clip stays as it is); refuse a
        learned background or local readout that nothing would train."""
        needs = [n for n, on in (("learned_background", model.config.learned_background),
                                 ("segment_readout=local", model.config.segment_readout == "local")) if on]  # fmt: skip
        if needs and not self.options.segment_loss_weight > 0:
            raise ConfigError(
                f"{' and '.join(needs)} is trained only by the segment loss: --set segment_loss_weight=1 "
                "(the shapes recipe sets both)"
            )
        if self.options.lock_text:
            for p in model.text.parameters():
                p.requires_grad_(False)
            model.logit_scale.requires_grad_(False)
        segment_loss = self.options.segment_loss_weight > 0
        if not segment_loss and (not self.options.multi_label or not self.options.multi_label_weight):
            model.multi_label_logit_scale.requires_grad_(False)  # its temperature goes unused
        if hasattr(model, "background_embedding") and not segment_loss:  # only the segment loss trains it
            model.background_embedding.requires_grad_(False)

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Normalised pooled image (B, E), caption (B, E) and prompt (B, K, E) embeddings and the scales."""
        inner = getattr(model, "module", model)
        out = {"ml_scale": inner.multi_label_scale()}
        o = self.options
        if o.segment_loss_weight > 0 or o.group_balance_weight > 0 or o.affinity_weight > 0:
            pooled, segments, hard = model(batch["images"], segments=True)
            for i, h in enumerate(hard):  # one (B, G_i, L_i) tensor per stage: accumulation splits them by rows
                out[f"assignment_{i}"] = h
            if o.affinity_weight > 0:
                out["affinity"] = patch_affinity(batch["images"], inner.config, o.affinity_sigma)
            if "nouns" in batch:
                out["segments"] = F.normalize(segments.float(), dim=-1)
                out["noun_presence"] = batch["noun_presence"].to(segments.device)
                if hasattr(inner, "background_embedding"):
                    out["background"] = F.normalize(inner.background_embedding.float(), dim=-1)
        else:
            pooled = model(batch["images"])
        out["image"] = F.normalize(pooled.float(), dim=-1)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.options.lock_text):
            out["text"] = F.normalize(inner.encode_text(batch["tokens"]).float(), dim=-1)
            out["scale"] = inner.scale()
            if "prompts" in batch:
                B, K, L = batch["prompts"].shape
                prompts = inner.encode_text(batch["prompts"].reshape(B * K, L)).float()
                out["prompts"] = F.normalize(prompts, dim=-1).view(B, K, -1)
            if "nouns" in batch:
                out["nouns"] = F.normalize(inner.encode_text(batch["nouns"]).float(), dim=-1)
        return out

    def loss(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """L_IT (symmetric InfoNCE over the global batch) + weight x L_ML (each image against every
        prompt of the batch, soft target 1/K on its own; each prompt against every image)."""
        losses = {
            "contrastive": clip_loss(
                outputs["image"],
                outputs["text"],
                outputs["scale"],
                gather=is_distributed(),
                local_loss=self.options.local_loss,
            )
        }
        if "prompts" in outputs and self.options.multi_label_weight > 0:
            image, prompts = outputs["image"], outputs["prompts"]
            B, K, _ = prompts.shape
            logits = outputs["ml_scale"] * image @ prompts.reshape(B * K, -1).T  # (B, B*K)
            owner = torch.arange(B, device=image.device).repeat_interleave(K)  # (B*K,)
            target = (owner[None, :] == torch.arange(B, device=image.device)[:, None]).float() / K
            image_side = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
            prompt_side = F.cross_entropy(logits.T, owner)
            losses["multi_label"] = self.options.multi_label_weight * 0.5 * (image_side + prompt_side)
        if "segments" in outputs and self.options.segment_loss_weight > 0:
            # before segment_start it weighs 0 (computed all the same, so that every parameter has a gradient
            # on every step, as DistributedDataParallel requires)
            on = self.step >= self.options.segment_start
            losses.update(segment_losses(outputs, self.options.segment_loss_weight if on else 0.0))
        stages = sum(k.startswith("assignment_") for k in outputs)
        assignments = tuple(outputs[f"assignment_{i}"] for i in range(stages))
        if assignments and self.options.group_balance_weight > 0:
            losses["group_balance"] = self.options.group_balance_weight * group_balance(assignments)
        if "affinity" in outputs:
            affinity = affinity_loss(assignments, outputs["affinity"])
            losses["affinity"] = self.options.affinity_weight * affinity
        return losses

    def after_step(self, model: GroupViT) -> None:
        """Keep both temperatures' scales at most `max_logit_scale`."""
        with torch.no_grad():
            for p in (model.logit_scale, model.multi_label_logit_scale):
                p.clamp_(0, np.log(model.max_logit_scale))

    def log_values(self, model: GroupViT) -> dict[str, float]:
        """The contrastive scale exp(t)."""
        return {"scale": float(model.scale().detach())}


def segment_losses(outputs: dict[str, torch.Tensor], weight: float) -> dict[str, torch.Tensor]:
    """The segment-level noun loss (this rank's batch): with unit segments (B, G, E), noun prompts (U, E) and
    which image's caption names which noun (B, U), each noun's positive in an image that names it is that
    image's most similar segment. `segment_nouns`: each noun against every segment of the batch (softmax
    over the B*G segments), so segments of other shapes and of the background are pushed off the noun;
    where several images name the noun their positives share the softmax (the loss cannot go below log of
    their count), and a second segment of a named shape (a split shape, a second circle) is pushed off it
    like the background. Empty groups (no token falls into them) take part like any other: leaving them
    out let the model put every token of an image into one group (study mIoU 0.086 against 0.214; so did
    only keeping them from being positives, with the affinity term at 0.2).
    `segment_background` (when the model learns a background embedding): each segment of an image that
    names a noun classified over [the batch's nouns, background], target its noun where it is that noun's
    positive (the later noun where two chose it) and background elsewhere (only images that name a noun
    take part)."""
    segments, nouns, present = outputs["segments"], outputs["nouns"], outputs["noun_presence"]
    B, G, _ = segments.shape
    U = nouns.shape[0]
    scale = outputs["ml_scale"]
    sims = segments @ nouns.T  # (B, G, U)
    best = sims.detach().argmax(dim=1)  # (B, U): each image's positive segment for each noun
    rows = torch.arange(B, device=sims.device)[:, None] * G + best  # (B, U) flat index into the B*G segments
    log_p = (scale * sims.reshape(B * G, U)).log_softmax(dim=0)
    positives = present.float()
    losses = {"segment_nouns": weight * -(log_p.gather(0, rows) * positives).sum() / positives.sum().clamp(min=1)}
    if "background" in outputs:
        classes = torch.cat([nouns, outputs["background"][None]])  # (U + 1, E)
        logits = scale * segments @ classes.T  # (B, G, U + 1)
        # a segment that is some named noun's positive takes that noun (the later of the batch's sorted nouns
        # where two chose the same segment), every other segment (empty ones too) the background
        chosen = present[:, None, :] & (best[:, None, :] == torch.arange(G, device=sims.device)[None, :, None])
        index = torch.arange(U, device=sims.device).expand_as(chosen)
        winner = torch.where(chosen, index, torch.full_like(index, -1)).max(dim=-1).values  # (B, G)
        target = torch.where(winner >= 0, winner, torch.full_like(winner, U))
        named = present.any(dim=1)
        if named.any():
            ce = F.cross_entropy(logits[named].reshape(-1, U + 1), target[named].reshape(-1))
            losses["segment_background"] = weight * ce
    return losses


def group_balance(assignments: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean over the stages' assignments (B, G, L) of log G minus the entropy of each image's mean
    assignment over its tokens: 0 when an image's tokens spread evenly over the groups, log G when they
    all fall into one. Training passes the hard (straight-through) assignments: the soft ones can stay
    near uniform while every token's argmax falls into the same few groups."""
    terms = []
    for s in assignments:
        q = s.float().mean(dim=2)  # (B, G)
        # an empty group's log is taken at one token's share: its pull stays finite and tied to the token count
        entropy = -(q * q.clamp(min=1 / s.shape[2]).log()).sum(dim=1)
        terms.append(np.log(s.shape[1]) - entropy)
    return torch.stack(terms).mean(dim=0).mean()


def patch_affinity(images: torch.Tensor, config: Any, sigma: float) -> torch.Tensor:
    """(B, 3, S, S) preprocessed images -> (B, 4, g, g) colour affinity of each patch with its right, lower,
    lower-right and lower-left neighbour on the g x g patch grid: exp(-d^2 / 2 sigma^2) of the distance d of
    the two patches' mean RGB colours in [0, 1] (the last column/row, where a neighbour is missing, is 0)."""
    p = config.preprocess
    mean = torch.tensor(p.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(p.std, device=images.device).view(1, 3, 1, 1)
    with torch.no_grad():
        colour = F.avg_pool2d(images.float() * std + mean, config.patch_size)  # (B, 3, g, g)
        pairs = torch.zeros(images.shape[0], 4, *colour.shape[-2:], device=images.device)
        for k, (a, b) in enumerate(_neighbours(colour)):
            d2 = (a - b).pow(2).sum(dim=1)
            pairs[:, k, : d2.shape[1], : d2.shape[2]] = torch.exp(-d2 / (2 * sigma**2))
    return pairs


def _neighbours(x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(B, C, g, g) -> the 4 (patch, neighbour) pairs of views: right, lower, lower-right, lower-left (the
    lower-left pair's views start one column in, so both align at column 0 of the returned map)."""
    return [
        (x[..., :, :-1], x[..., :, 1:]),
        (x[..., :-1, :], x[..., 1:, :]),
        (x[..., :-1, :-1], x[..., 1:, 1:]),
        (x[..., :-1, 1:], x[..., 1:, :-1]),
    ]


def affinity_loss(assignments: tuple[torch.Tensor, ...], affinity: torch.Tensor) -> torch.Tensor:
    """Expected disagreement with the colour affinity: the stages' (straight-through hard) assignments composed
    (patch -> final group), S = the chance two neighbours share a final group; each pair costs a (1 - S) +
    (1 - a) S for its affinity a. Linear in S, so the one-hot forward values are fine and the gradient reaches
    the assignment logits through the straight-through soft part."""
    composed = compose([h.float() for h in assignments])
    B, G, L = composed.shape
    g = affinity.shape[-1]
    z = composed.view(B, G, g, g)
    total, count = composed.new_zeros(()), 0
    for k, (a, b) in enumerate(_neighbours(z)):
        same = (a * b).sum(dim=1)  # (B, g', g'')
        aff = affinity[:, k, : same.shape[1], : same.shape[2]]
        total = total + (aff * (1 - same) + (1 - aff) * same).sum()
        count += same.numel()
    return total / count
