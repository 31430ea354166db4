"""Property-based tests: any text, any image bytes, any damaged checkpoint file gives a result or a
clipforge error, never a crash from deep inside a library."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import clipforge
from clipforge.errors import ClipforgeError, ImageError, TokenizerError
from clipforge.tokenizer import get_tokenizer
from clipforge.transforms import image_transform, load_image

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
SOT, EOT = 49406, 49407


# --------------------------------------------------------------------------------------- tokenizer
@FUZZ
@given(st.lists(st.text(max_size=200), min_size=1, max_size=4), st.integers(2, 80))
def test_tokenizer_takes_any_unicode(tally, texts, context_length):
    tally["tokenizer texts"] += len(texts)
    ids = clipforge.tokenize(texts, context_length=context_length, truncate=True)
    assert ids.shape == (len(texts), context_length) and ids.dtype == torch.int64
    for text, row in zip(texts, ids.tolist()):
        full = [SOT, *get_tokenizer().encode(text), EOT]
        assert row[0] == SOT
        end = row.index(EOT)
        assert all(t == 0 for t in row[end + 1 :])  # padding after end-of-text
        if len(full) <= context_length:
            assert row[: len(full)] == full  # fits: exactly the encoding
        else:
            assert end == context_length - 1 and row[:-1] == full[: context_length - 1]  # cut, ends in EOT
    try:
        strict = clipforge.tokenize(texts, context_length=context_length)
    except TokenizerError as e:
        assert "truncate=True" in str(e)
        assert any(len(get_tokenizer().encode(t)) + 2 > context_length for t in texts)
    else:
        assert torch.equal(strict, ids)


def test_tokenizer_refuses_absurd_contexts_and_takes_huge_text(tally):
    tally["tokenizer texts"] += 3
    for bad in (1, 10**9, 7.5):
        with pytest.raises(TokenizerError, match="context_length"):
            clipforge.tokenize("a cat", context_length=bad)
    ids = clipforge.tokenize("a photo of a cat " * 20_000, truncate=True)
    assert ids.shape == (1, 77) and ids[0, -1] == EOT


# ------------------------------------------------------------------------------------------ images
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
FORMATS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "WEBP": "webp", "TIFF": "tif"}


@st.composite
def encoded_images(draw):
    """A small random image in a random mode, encoded in a random format the mode allows."""
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    mode = draw(st.sampled_from(MODES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert(mode)
    for fmt in draw(st.permutations(list(FORMATS))):
        buf = io.BytesIO()
        try:
            image.save(buf, format=fmt)
        except (OSError, ValueError, KeyError):
            continue  # this format cannot hold this mode
        return buf.getvalue()
    return b""


@FUZZ
@given(encoded_images(), st.integers(8, 64))
def test_any_valid_image_preprocesses_to_a_tensor(tally, data, size):
    tally["valid images"] += 1
    image = load_image(data, "fuzz")
    for train in (False, True):
        x = image_transform(size, train=train)(image)
        assert x.shape == (3, size, size) and torch.isfinite(x).all()


@FUZZ
@given(encoded_images(), st.data())
def test_damaged_image_bytes_give_an_image_error_or_a_tensor(tally, data, draw):
    tally["damaged images"] += 1
    data = bytearray(data)
    kind = draw.draw(st.sampled_from(["truncate", "flip", "random"]))
    if kind == "truncate":
        data = data[: draw.draw(st.integers(0, max(0, len(data) - 1)))]
    elif kind == "flip":
        for _ in range(draw.draw(st.integers(1, 8))):
            if data:
                data[draw.draw(st.integers(0, len(data) - 1))] ^= 1 << draw.draw(st.integers(0, 7))
    else:
        data = bytearray(draw.draw(st.binary(max_size=400)))
    try:
        image = load_image(bytes(data), "fuzz")
    except ImageError:
        tally["damaged images refused"] += 1
        return
    x = image_transform(16)(image)
    assert x.shape == (3, 16, 16) and torch.isfinite(x).all()


def _png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but carries one tiny compressed row."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 9)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (1_000_000, 300), (30_000, 30_000)])
def test_decompression_bombs_are_refused(tally, width, height):
    tally["image bombs"] += 1
    with pytest.raises(ImageError, match="refused|decompression bomb"):
        load_image(_png(width, height), "bomb.png")


# ------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory):
    """The same tiny CLIP as clipforge safetensors, a torch state dict and a TorchScript archive."""
    import warnings

    root = tmp_path_factory.mktemp("ckpts")
    model = clipforge.create_model("tiny-vit", seed=0, vision={"image_size": 32, "layers": 1}, text={"layers": 1})
    clipforge.save(model, root / "m.safetensors")
    clipforge.save(model, root / "oa.pt", format="openai")

    class Wrapper(torch.nn.Module):  # traced like OpenAI's released models: a scripted CLIP module
        def __init__(self) -> None:
            super().__init__()
            self.visual, self.text, self.logit_scale = model.visual, model.text, model.logit_scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.visual(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(Wrapper(), torch.randn(1, 3, 32, 32), check_trace=False).save(str(root / "jit.pt"))
    return {name: (root / name).read_bytes() for name in ("m.safetensors", "oa.pt", "jit.pt")}


@FUZZ
@given(
    st.sampled_from(["m.safetensors", "oa.pt", "jit.pt"]), st.sampled_from(["truncate", "flip", "random"]), st.data()
)
def test_damaged_checkpoints_give_a_clipforge_error_or_a_model(
    tally, checkpoint_files, tmp_path_factory, name, kind, draw
):
    tally["damaged checkpoint files"] += 1
    data = bytearray(checkpoint_files[name])
    if kind == "truncate":
        data = data[: draw.draw(st.integers(0, len(data) - 1))]
    elif kind == "flip":
        for _ in range(draw.draw(st.integers(1, 16))):
            data[draw.draw(st.integers(0, len(data) - 1))] ^= 1 << draw.draw(st.integers(0, 7))
    else:
        data = bytearray(draw.draw(st.binary(max_size=2000)))
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(bytes(data))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # QuickGELU assumed for weights without a config
        try:
            model = clipforge.load(path, act="gelu") if name != "m.safetensors" else clipforge.load(path)
        except ClipforgeError:
            tally["damaged checkpoint files refused"] += 1
            return
    assert isinstance(model, torch.nn.Module)  # damage inside the weights themselves still loads
