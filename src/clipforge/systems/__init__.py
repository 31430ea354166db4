"""One package per system, each registered by name (`clipforge.registry`). `clip` is the template:
its package holds the task, evaluators, recipes, commands, checkpoint formats and study; the CLIP
model and its towers live in the core (`clipforge.models`), since every other system builds on them."""
