"""Named GroupViT training runs (`clipforge train groupvit --recipe NAME --out DIR`)."""

from __future__ import annotations

from ...registry import Recipe

SHAPES = Recipe(
    name="shapes",
    doc="""GroupViT on synthetic captions, its text tower the `shapes` CLIP's (locked), no masks.

    clipforge train groupvit --recipe shapes --out runs/groupvit

`clipforge study groupvit` trains this recipe and segments held-out scenes zero-shot (docs/groupvit.md).""",
    model="groupvit-shapes",
    data="synthetic:n=1000000",
    clip="shapes",
    # the segment loss from step 1000 on: started at step 0 it fell, depending on the seed, into naming the
    # background group after the shapes (docs/groupvit.md)
    settings={"learned_background": True, "segment_loss_weight": 1.0, "segment_start": 1000},
    train={"steps": 2000, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.05},
)

RECIPES = {r.name: r for r in (SHAPES,)}
