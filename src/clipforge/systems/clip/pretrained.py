"""Pretrained CLIP weights by name: OpenAI's released models (downloaded once from the published URL,
their SHA-256 checked) and `shapes`, the CLIP trained on the synthetic world, shipped with clipforge."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ...hub import cache_dir, download
from ...presets import ALIASES
from ...registry import Pretrained

OPENAI_URL = "https://openaipublic.azureedge.net/clip/models/{sha256}/{file}"
# name -> (SHA-256, file name), as OpenAI's clip.py publishes them (the hash is part of the URL)
OPENAI = {
    "RN50": ("afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
    "RN101": ("8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt"),
    "RN50x4": ("7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt"),
    "RN50x16": ("52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa", "RN50x16.pt"),
    "RN50x64": ("be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c", "RN50x64.pt"),
    "ViT-B-32": ("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    "ViT-B-16": ("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    "ViT-L-14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    "ViT-L-14-336": ("3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02", "ViT-L-14-336px.pt"),
}
SHAPES_FILE = "shapes.safetensors"


def _openai(name: str, sha256: str, filename: str) -> Pretrained:
    def fetch() -> Path:
        return download(OPENAI_URL.format(sha256=sha256, file=filename), sha256, filename, subdir="openai")

    return Pretrained(
        name=name,
        tag="openai",
        description=f"OpenAI's released {name} (QuickGELU), from its published URL, SHA-256 checked",
        fetch=fetch,
        cached=lambda: (cache_dir() / "openai" / filename).exists(),
        aliases=tuple(a for a, target in ALIASES.items() if target == name),
        load_options={"model": name},
    )


def shapes_path() -> Path:
    """The shipped `shapes` weights inside the installed package."""
    return Path(str(resources.files("clipforge").joinpath("assets", SHAPES_FILE)))


SHAPES = Pretrained(
    name="shapes",
    tag="shapes",
    description="tiny-rn CLIP with a 1-layer text tower trained on the synthetic world by the quickstart recipe "
    "(shipped with clipforge; no download)",
    fetch=shapes_path,
    cached=lambda: shapes_path().exists(),
)

PRETRAINED = (*(_openai(name, sha, file) for name, (sha, file) in OPENAI.items()), SHAPES)
