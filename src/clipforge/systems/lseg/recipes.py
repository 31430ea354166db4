"""Named LSeg training runs (`clipforge train lseg --recipe NAME --out DIR`)."""

from __future__ import annotations

from ...registry import Recipe

SHAPES = Recipe(
    name="shapes",
    doc="""LSeg on the `shapes` CLIP: 400 steps of 64 synthetic scenes with class masks (about 2 min on 2 CPU cores).

    clipforge train lseg --recipe shapes --out runs/lseg

Add --set unseen=circle,square to leave two shapes unsupervised (their pixels ignored, their names
never offered) and name them at test time: `clipforge study lseg` does that for 4 folds.""",
    model="lseg-shapes",
    data="synthetic:n=100000",
    clip="shapes",
    train={"steps": 400, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-4},
)

RECIPES = {r.name: r for r in (SHAPES,)}
