"""CLIP image preprocessing on PIL images, without torchvision.

Evaluation (OpenAI's): bicubic resize of the shorter side to n, centre crop n x n, RGB, scale to
[0, 1], normalise with CLIP's mean/std. Training: random resized crop (bicubic) instead of
resize + centre crop, the only augmentation the paper used.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .config import OPENAI_MEAN, OPENAI_STD
from .errors import ImageError

_FILTERS = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
}

# Modes PIL resizes itself; they are converted to RGB after the crop, in OpenAI's order.
_NATIVE_MODES = ("RGB", "L", "RGBA", "LA")


def load_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Open and fully decode an image file (or its bytes, called `name` in errors); a missing, corrupt,
    truncated or absurdly large image raises ImageError."""
    name = name or str(source if not isinstance(source, bytes) else "image bytes")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()  # decode now, so truncation is detected here and not later in a worker
            return im.copy()
    except FileNotFoundError as e:
        raise ImageError(f"image file not found: {name}") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name} is refused: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name} is not a readable image (unknown format or corrupt header)") from e
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError) as e:
        raise ImageError(f"{name} could not be decoded ({e}); the file is corrupt or truncated") from e


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB. 16/32-bit integer and float images are scaled to 0..255."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0
        elif image.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        image = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "P":
        image = image.convert("RGBA")
    return image.convert("RGB")


def _to_tensor(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    arr = torch.from_numpy(np.asarray(to_rgb(image), dtype=np.uint8).copy())  # (H, W, 3)
    x = arr.permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (x - m) / s


def image_to_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Any PIL image as a normalised (3, H, W) float tensor, at its own size."""
    return _to_tensor(_prepare(image), tuple(mean), tuple(std))


def _prepare(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ImageError(f"expected a PIL image, got {type(image).__name__}; use clipforge.load_image(path)")
    return image if image.mode in _NATIVE_MODES else to_rgb(image)


def resize_shorter(image: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize so the shorter side is `size` (the longer side rounds down, as torchvision)."""
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), _FILTERS[interpolation])


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central size x size crop, zero-padding a smaller image first (as torchvision does)."""
    w, h = image.size
    if w < size or h < size:  # pad like torchvision when the image is smaller than the crop
        canvas = Image.new(image.mode, (max(w, size), max(h, size)))
        canvas.paste(image, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        image, (w, h) = canvas, canvas.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


class ImageTransform:
    """Callable PIL image -> normalised (3, n, n) float tensor."""

    def __init__(
        self,
        image_size: int,
        train: bool = False,
        mean: tuple[float, ...] = OPENAI_MEAN,
        std: tuple[float, ...] = OPENAI_STD,
        scale: tuple[float, float] = (0.9, 1.0),
        seed: int | None = None,
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
    ) -> None:
        self.image_size = image_size
        self.train = train
        self.mean, self.std = tuple(mean), tuple(std)
        self.interpolation, self.resize_mode = interpolation, resize_mode
        self.scale = scale
        self.rng = random.Random(seed)

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        """Transform one image; training crops draw from `rng` if given (reproducible per sample)."""
        image = _prepare(image)
        if self.train:
            image = self.random_resized_crop(image, rng or self.rng)
        elif self.resize_mode == "squash":
            image = image.resize((self.image_size, self.image_size), _FILTERS[self.interpolation])
        else:
            image = center_crop(resize_shorter(image, self.image_size, self.interpolation), self.image_size)
        return _to_tensor(image, self.mean, self.std)

    def random_resized_crop(self, image: Image.Image, rng: random.Random) -> Image.Image:
        """Crop a random area fraction in `scale` with aspect ratio in [3/4, 4/3], resize to n x n."""
        w, h = image.size
        area = w * h
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
                break
        else:  # fall back to the largest centred square
            cw = ch = min(w, h)
            left, top = (w - cw) // 2, (h - ch) // 2
        crop = image.crop((left, top, left + cw, top + ch))
        return crop.resize((self.image_size, self.image_size), _FILTERS[self.interpolation])

    def __repr__(self) -> str:
        return f"ImageTransform(image_size={self.image_size}, train={self.train})"


def image_transform(image_size: int, train: bool = False, **kwargs: object) -> Callable[[Image.Image], torch.Tensor]:
    """CLIP preprocessing for `image_size` (eval: resize + centre crop; train: random resized crop)."""
    return ImageTransform(image_size, train=train, **kwargs)  # type: ignore[arg-type]


def model_transform(model: object, train: bool = False) -> ImageTransform:
    """The preprocessing a model (or a model config) was trained with: its input size and its config's
    `preprocess` (mean, std, interpolation, resize mode); OpenAI's where the config has none."""
    config = getattr(model, "config", model)
    size = config.vision.image_size
    p = getattr(config, "preprocess", None)
    if p is None:
        return ImageTransform(size, train=train)
    return ImageTransform(
        size, train=train, mean=p.mean, std=p.std, interpolation=p.interpolation, resize_mode=p.resize_mode
    )
