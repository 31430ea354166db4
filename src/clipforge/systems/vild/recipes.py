"""Named ViLD training runs (`clipforge train vild --recipe NAME --out DIR`)."""

from __future__ import annotations

from ...registry import Recipe

# 64-px scenes hold at most 3 objects: 64 RoIs per image (not 512) keep every positive and cost 0.7x
_TRAIN = {"steps": 600, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4}

SHAPES_TEXT = Recipe(
    name="shapes-text",
    doc="""ViLD-text on synthetic scenes: boxes of 6 shapes (star and hexagon novel: in the images, never
    boxed), classified by the `shapes` CLIP's text embeddings. Its RPN then proposes the regions ViLD-image
    distils:

    clipforge train vild --recipe shapes-text --out runs/vild_text""",
    model="vild-shapes",
    data="synthetic:n=4000",
    clip="shapes",
    settings={"novel": "star,hexagon", "roi_batch": 64},
    train=_TRAIN,
)

SHAPES = Recipe(
    name="shapes",
    doc="""ViLD (text + image distillation, w = 0.5) on the same scenes; the distilled regions come from a
    ViLD-text run's RPN:

    clipforge train vild --recipe shapes --set proposals=runs/vild_text/model.safetensors --out runs/vild""",
    model="vild-shapes",
    data="synthetic:n=4000",
    clip="shapes",
    settings={"novel": "star,hexagon", "image_weight": 0.5, "roi_batch": 64},
    train=_TRAIN,
)

RECIPES = {r.name: r for r in (SHAPES_TEXT, SHAPES)}
