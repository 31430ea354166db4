"""Batching: a resumable, rank-aware sampler for map-style sources, and the loader built on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless global batches over seeded per-epoch permutations; this rank gets its slice.

    Sample position p of the run is (epoch p // n, index perm_epoch[p % n]); global batch b covers
    positions [b*B, (b+1)*B) and rank r takes the r-th of `world` equal slices. So a run resumed at
    batch b sees exactly the samples an uninterrupted run would, on any number of ranks.
    """

    def __init__(
        self, num_samples: int, global_batch: int, rank: int = 0, world: int = 1, seed: int = 0, start_batch: int = 0
    ) -> None:
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world}")
        self.n, self.batch, self.rank, self.world = num_samples, global_batch, rank, world
        self.seed, self.start_batch = seed, start_batch
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _index(self, position: int) -> tuple[int, int]:
        epoch = position // self.n
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), epoch
        return epoch, int(self._perm[position % self.n])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_rank = self.batch // self.world
        b = self.start_batch
        while True:
            start = b * self.batch + self.rank * per_rank
            yield [self._index(p) for p in range(start, start + per_rank)]
            b += 1

    def __len__(self) -> int:  # endless; DataLoader only needs this for its own bookkeeping
        return 2**62


def make_loader(
    dataset: Dataset,
    global_batch: int,
    collate: Callable[[list[Any]], dict[str, Any]],
    rank: int = 0,
    world: int = 1,
    seed: int = 0,
    start_batch: int = 0,
    workers: int = 1,
) -> DataLoader:
    """An endless DataLoader of this rank's share of each global batch, batched by `collate`."""
    common: dict[str, Any] = dict(
        collate_fn=collate,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
        # its own generator: starting an iterator then draws the workers' base seed from it, not from the
        # global RNG, which a task's forward may use (Gumbel noise, dropout) and a resumed run restores
        generator=torch.Generator().manual_seed(seed),
    )
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, batch_size=global_batch // world, **common)
    sampler = ResumableBatchSampler(len(dataset), global_batch, rank, world, seed, start_batch)
    return DataLoader(dataset, batch_sampler=sampler, **common)


def trim_tokens(tokens: torch.Tensor, context_length: int, multiple: int = 1) -> torch.Tensor:
    """(B, context_length) token ids cut after the longest caption's last token, that length rounded up to
    `multiple` (at most the context length): exact for a causal text tower pooled at end-of-text."""
    longest = int((tokens != 0).sum(dim=1).max())
    return tokens[:, : min(context_length, -(-longest // multiple) * multiple)].contiguous()


class ImageTextCollate:
    """Batches image-caption samples: stacks images, tokenises captions (truncating over-long ones)
    and trims tokens to the longest caption in the batch, which is exact for a causal text tower
    pooled at end-of-text; `multiple` rounds that length up (at most to the context length), so a
    compiled text tower meets a few shapes instead of one per caption length. A plain object, so data
    workers can receive it under any start method."""

    def __init__(self, context_length: int = 77, multiple: int = 1) -> None:
        self.context_length, self.multiple = context_length, multiple

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Samples -> {images (B, 3, H, W), tokens (B, L) int64, captions, skipped (summed)}."""
        from ..tokenizer import get_tokenizer

        captions = [it["caption"] for it in items]
        tokens = get_tokenizer()(captions, context_length=self.context_length, truncate=True)
        return {
            "images": torch.stack([it["image"] for it in items]),
            "tokens": trim_tokens(tokens, self.context_length, self.multiple),
            "captions": captions,
            "skipped": sum(int(it.get("skipped", 0)) for it in items),
        }
