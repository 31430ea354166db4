"""The three pre-training objectives the CLIP paper compares (its efficiency figure), as tasks for the
generic trainer. All of them put a head on the same image tower (`CLIP.from_config(config).visual`),
so only the objective differs:

- `CaptioningModel`: a causal transformer decoder conditioned on the image by a learned prefix,
  trained with next-token cross-entropy; zero-shot by each prompt's log-likelihood.
- `BagOfWordsModel`: predicts the caption's normalised bag-of-words distribution (softmax
  cross-entropy against it); zero-shot by the summed log-probability of each prompt's words.
- `BagOfWordsCLIP`: a bag-of-words text encoder (mean of word embeddings, linear projection)
  trained with the CLIP loss; zero-shot like CLIP (`encode_text` / `encode_image`).

The full CLIP (transformer text tower) is the fourth line of the study and uses `CLIPTask`.

Words are CLIP's BPE tokens, mapped to a compact `Vocabulary` of the tokens seen in a sample of the
training captions (unseen ones become `<unk>`), so the output layers stay small.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ...config import CLIPConfig
from ...data.loader import ImageTextCollate
from ...distributed import is_distributed
from ...eval.zeroshot import load_templates
from ...layers import Transformer
from ...losses import clip_loss
from ...models import CLIP
from ...tokenizer import get_tokenizer, tokenize
from ...train.task import Task
from .task import CLIPTask, image_text_dataset

PAD, UNK, SOT, EOT = 0, 1, 2, 3  # compact ids


class Vocabulary(nn.Module):
    """Maps CLIP BPE ids to compact ids: 0 pad, 1 unk, 2 start, 3 end, then tokens by frequency."""

    def __init__(self, token_ids: Sequence[int], bpe_size: int = 49408) -> None:
        super().__init__()
        tok = get_tokenizer()
        self.sot, self.eot = tok.sot_token_id, tok.eot_token_id
        lookup = torch.full((bpe_size,), UNK, dtype=torch.long)
        lookup[0], lookup[self.sot], lookup[self.eot] = PAD, SOT, EOT
        words = [t for t in dict.fromkeys(int(t) for t in token_ids) if t not in (0, self.sot, self.eot)]
        lookup[torch.tensor(words, dtype=torch.long)] = torch.arange(4, 4 + len(words))
        self.register_buffer("lookup", lookup, persistent=True)
        self.size = 4 + len(words)

    @classmethod
    def from_captions(cls, captions: Iterable[str], max_size: int = 8192, context_length: int = 77) -> Vocabulary:
        """The `max_size - 4` most frequent BPE tokens of `captions`."""
        counts: Counter[int] = Counter()
        captions = list(captions)
        for start in range(0, len(captions), 1024):
            ids = tokenize(captions[start : start + 1024], context_length=context_length, truncate=True)
            counts.update(ids[ids != 0].tolist())
        return cls([t for t, _ in counts.most_common(max_size)])

    def forward(self, bpe: torch.Tensor) -> torch.Tensor:
        """CLIP BPE ids -> compact ids (any shape)."""
        return self.lookup[bpe]

    def words(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, V) bag-of-words counts of compact ids, without pad/start/end."""
        counts = torch.zeros(ids.shape[0], self.size, device=ids.device)
        counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=counts.dtype))
        counts[:, [PAD, SOT, EOT]] = 0
        return counts


class _ImageTowerModel(nn.Module):
    """Common part: the CLIP image tower of `config` (embed_dim outputs) and the vocabulary."""

    def __init__(self, config: CLIPConfig, vocab: Vocabulary) -> None:
        super().__init__()
        self.config = config
        # the image tower of `create_model(config, seed)`: built as part of a whole CLIP, so the heads each
        # objective adds after it draw the same random numbers as they always have
        self.visual = CLIP.from_config(config).visual
        self.vocab = vocab

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)  # (B, E)


def _prompt_ids(model: _ImageTowerModel, classnames: Sequence[str], templates: Any) -> tuple[torch.Tensor, int]:
    """Compact ids (C*T, L) of every template filled with every class (class-major), and T."""
    templates = load_templates(templates)
    texts = [t.format(c) for c in classnames for t in templates]
    bpe = tokenize(texts, context_length=model.config.text.context_length, truncate=True)
    bpe = bpe[:, : int((bpe != 0).sum(1).max())]
    return model.vocab(bpe.to(model.vocab.lookup.device)), len(templates)


class CaptioningModel(_ImageTowerModel):
    """Image features -> `prefix` tokens -> causal transformer over [prefix, <start>, w1 .. wn]."""

    def __init__(self, config: CLIPConfig, vocab: Vocabulary, prefix: int = 4, layers: int | None = None) -> None:
        super().__init__(config, vocab)
        t = config.text
        width, self.prefix = t.width, prefix
        self.prefix_proj = nn.Linear(config.embed_dim, prefix * width)
        self.token_embedding = nn.Embedding(vocab.size, width)
        self.positional_embedding = nn.Parameter(torch.randn(prefix + t.context_length, width) * 0.01)
        self.decoder = Transformer(width, layers or t.layers, t.heads, t.mlp_ratio, t.act, t.ln_eps)
        self.ln_final = nn.LayerNorm(width, eps=t.ln_eps)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.decoder.init_weights()

    def token_logits(self, image_features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, L, V) next-token logits after each of the first L tokens of `ids` (compact ids)."""
        b, n = ids.shape
        prefix = self.prefix_proj(image_features).view(b, self.prefix, -1)  # (B, P, W)
        x = torch.cat([prefix, self.token_embedding(ids)], dim=1) + self.positional_embedding[: self.prefix + n]
        x = self.ln_final(self.decoder(x, causal=True))[:, self.prefix :]  # (B, L, W)
        return x @ self.token_embedding.weight.T  # tied output layer

    def sequence_nll(self, image_features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B,) summed negative log-likelihood of tokens 1.. of each sequence (padding ignored)."""
        logits = self.token_logits(image_features, ids[:, :-1]).float()
        target = ids[:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=PAD, reduction="none")  # (B, L-1)
        return nll.sum(1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample mean next-token negative log-likelihood of the caption given the image."""
        ids = self.vocab(tokens)
        nll = self.sequence_nll(self.encode_image(images), ids)
        return {"nll_per_token": nll / (ids[:, 1:] != PAD).sum(1).clamp(min=1)}  # (B,)

    @torch.no_grad()
    def zero_shot_logits(
        self, image_features: torch.Tensor, classnames: Sequence[str], templates: Any, batch_size: int = 8192
    ) -> torch.Tensor:
        """(N, C): mean over templates of log p(prompt | image)."""
        ids, t = _prompt_ids(self, classnames, templates)  # (C*T, L)
        feats = image_features.to(ids.device)
        n, p = feats.shape[0], ids.shape[0]
        out = torch.empty(n, p)
        per = max(1, batch_size // p)
        for i in range(0, n, per):
            f = feats[i : i + per]
            rows = f.repeat_interleave(p, dim=0)
            out[i : i + per] = -self.sequence_nll(rows, ids.repeat(f.shape[0], 1)).view(-1, p).cpu()
        return out.view(n, len(classnames), t).mean(-1)


class BagOfWordsModel(_ImageTowerModel):
    """Image features -> logits over the vocabulary; trained against the caption's word distribution."""

    def __init__(self, config: CLIPConfig, vocab: Vocabulary) -> None:
        super().__init__(config, vocab)
        self.head = nn.Sequential(nn.LayerNorm(config.embed_dim), nn.Linear(config.embed_dim, vocab.size))

    def word_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, E) image features -> (B, V) logits over the vocabulary."""
        return self.head(image_features)  # (B, V)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample cross-entropy of the predicted words against the caption's word distribution."""
        words = self.vocab.words(self.vocab(tokens))
        target = words / words.sum(1, keepdim=True).clamp(min=1)  # the caption's word distribution
        logp = self.word_logits(self.encode_image(images)).float().log_softmax(-1)
        return {"cross_entropy": -(target * logp).sum(1)}  # (B,)

    @torch.no_grad()
    def zero_shot_logits(self, image_features: torch.Tensor, classnames: Sequence[str], templates: Any) -> torch.Tensor:
        """(N, C): mean over templates of the summed log-probability of each prompt's words."""
        ids, t = _prompt_ids(self, classnames, templates)
        logp = self.word_logits(image_features.to(ids.device)).float().log_softmax(-1)  # (N, V)
        scores = logp @ self.vocab.words(ids).T  # (N, C*T): sum over the prompt's words
        return scores.view(-1, len(classnames), t).mean(-1).cpu()


class BagOfWordsCLIP(_ImageTowerModel):
    """CLIP with a bag-of-words text encoder: mean of word embeddings, then a linear projection."""

    def __init__(self, config: CLIPConfig, vocab: Vocabulary) -> None:
        super().__init__(config, vocab)
        width = config.text.width
        self.word_embedding = nn.Embedding(vocab.size, width)
        self.text_projection = nn.Linear(width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        nn.init.normal_(self.word_embedding.weight, std=0.02)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, E) from CLIP BPE token ids (B, L), as `CLIP.encode_text` takes them."""
        words = self.vocab.words(self.vocab(tokens))  # (B, V) counts
        mean = words @ self.word_embedding.weight / words.sum(1, keepdim=True).clamp(min=1)  # (B, W)
        return self.text_projection(mean)

    def scale(self) -> torch.Tensor:
        """exp(t), the temperature's scale."""
        return self.logit_scale.exp()

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised image and bag-of-words text embeddings (B, E) and the scale."""
        image = F.normalize(self.encode_image(images).float(), dim=-1)
        text = F.normalize(self.encode_text(tokens).float(), dim=-1)
        return {"image": image, "text": text, "scale": self.scale()}


class _ObjectiveTask(Task):
    """CLIP's data and batches; each model's forward returns per-sample outputs and the loss is their
    mean (exact under accumulation)."""

    name = ""
    key = ""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._collate = ImageTextCollate(model.config.text.context_length)

    def dataset(self, spec: str, seed: int = 0) -> Dataset:
        """Image-caption pairs, as for CLIP."""
        return image_text_dataset(spec, self.model.config, seed)

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """Images stacked, captions tokenised, as for CLIP."""
        return self._collate(items)

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The model's per-sample outputs."""
        return model(batch["images"], batch["tokens"])

    def loss(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Mean of the per-sample objective."""
        return {self.name: outputs[self.key].mean()}


class CaptioningTask(_ObjectiveTask):
    """Next-token cross-entropy per caption token."""

    name, key = "captioning", "nll_per_token"


class BagOfWordsTask(_ObjectiveTask):
    """Cross-entropy against the caption's word distribution."""

    name, key = "bag_of_words", "cross_entropy"


class BagOfWordsCLIPTask(_ObjectiveTask):
    """The CLIP loss on a bag-of-words text encoder."""

    def loss(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The symmetric contrastive loss."""
        loss = clip_loss(outputs["image"], outputs["text"], outputs["scale"], gather=is_distributed(), local_loss=True)
        return {"contrastive": loss}

    def after_step(self, model: nn.Module) -> None:
        """Keep exp(t) <= the maximum scale."""
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(model.config.max_logit_scale))

    def log_values(self, model: nn.Module) -> dict[str, float]:
        """The temperature's scale exp(t)."""
        return {"scale": float(model.scale().detach())}


OBJECTIVES = {
    "captioning": (CaptioningModel, CaptioningTask),
    "bow-prediction": (BagOfWordsModel, BagOfWordsTask),
    "bow-contrastive": (BagOfWordsCLIP, BagOfWordsCLIPTask),
}


def build_objective(name: str, config: CLIPConfig, vocab: Vocabulary | None = None, seed: int = 0) -> Any:
    """The task (holding its model) for objective `name`: one of OBJECTIVES or "clip". With the same seed,
    every objective starts from the same image-tower weights as `clipforge.create_model(config, seed)`."""
    from ...errors import ConfigError

    if name != "clip" and name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; use one of {', '.join([*OBJECTIVES, 'clip'])}")
    if name != "clip" and vocab is None:
        raise ConfigError(f"objective {name!r} needs a Vocabulary (Vocabulary.from_captions(...))")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "clip":
            return CLIPTask(CLIP.from_config(config))
        model_cls, task_cls = OBJECTIVES[name]
        return task_cls(model_cls(config, vocab))
