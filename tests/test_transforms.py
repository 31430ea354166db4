import io

import numpy as np
import pytest
import torch
from PIL import Image

import clipforge
from clipforge.transforms import OPENAI_MEAN, OPENAI_STD, center_crop, resize_shorter

MEAN = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
STD = torch.tensor(OPENAI_STD).view(3, 1, 1)


def test_constant_colour_is_normalised_with_openai_mean_std():
    img = Image.new("RGB", (40, 30), (255, 128, 0))
    x = clipforge.image_transform(32)(img)
    expected = (torch.tensor([255, 128, 0]).view(3, 1, 1) / 255 - MEAN) / STD
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x, expected.expand(3, 32, 32), atol=1e-6)


def test_shorter_side_resize_and_centre_crop_geometry():
    assert resize_shorter(Image.new("RGB", (100, 50)), 64).size == (128, 64)
    assert resize_shorter(Image.new("RGB", (50, 101)), 64).size == (64, 129)  # int() rounds down
    # a horizontal ramp: after resize to (128, 64) and a centre crop of 64, columns 32..95 remain
    ramp = np.tile(np.arange(100, dtype=np.uint8)[None, :, None] * 2, (50, 1, 3))
    out = center_crop(resize_shorter(Image.fromarray(ramp), 64), 64)
    arr = np.asarray(out)[:, :, 0].astype(float)
    assert out.size == (64, 64)
    assert abs(arr[:, 0].mean() - 2 * 32 * 100 / 128) < 3 and abs(arr[:, -1].mean() - 2 * 95 * 100 / 128) < 3


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"])
def test_every_pil_mode_works(mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(np.full((48, 80), 65535, dtype=np.uint16))
        assert img.mode == "I;16"
    elif mode == "F":
        img = Image.fromarray(np.full((48, 80), 1.0, dtype=np.float32))
    else:
        img = rgb.convert(mode)
    x = clipforge.image_transform(32)(img)
    assert x.shape == (3, 32, 32) and torch.isfinite(x).all()
    if mode in ("I;16", "F"):  # full-scale values become white
        assert torch.allclose(x, ((1 - MEAN) / STD).expand(3, 32, 32), atol=1e-5)


def test_train_transform_is_random_but_seeded():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    a = clipforge.image_transform(32, train=True, seed=1)
    b = clipforge.image_transform(32, train=True, seed=1)
    xa, xb = [a(img) for _ in range(3)], [b(img) for _ in range(3)]
    assert all(torch.equal(p, q) for p, q in zip(xa, xb))
    assert not torch.equal(xa[0], xa[1])
    assert xa[0].shape == (3, 32, 32)


def test_preprocess_matches_model_resolution():
    model = clipforge.create_model("tiny-rn")
    x = clipforge.preprocess(model)(Image.new("RGB", (200, 100)))
    assert x.shape == (3, 64, 64)
    assert model.encode_image(x[None]).shape == (1, 128)


def _png_bytes():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_load_image_errors_name_the_file(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(_png_bytes())
    assert clipforge.load_image(good).size == (64, 64)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_png_bytes()[:300])
    with pytest.raises(clipforge.ImageError, match="truncated.png.*corrupt or truncated"):
        clipforge.load_image(truncated)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff this is not really a jpeg" * 10)
    with pytest.raises(clipforge.ImageError, match="garbage.jpg"):
        clipforge.load_image(garbage)
    text = tmp_path / "notes.png"
    text.write_text("plain text")
    with pytest.raises(clipforge.ImageError, match="not a readable image"):
        clipforge.load_image(text)
    with pytest.raises(clipforge.ImageError, match="not found"):
        clipforge.load_image(tmp_path / "missing.png")


def test_transform_rejects_non_images():
    with pytest.raises(clipforge.ImageError, match="expected a PIL image"):
        clipforge.image_transform(32)(np.zeros((32, 32, 3)))
