"""Parity with Hugging Face transformers' CLIPModel (random weights, fp32), both directions."""

import pytest
import torch

import clipforge

transformers = pytest.importorskip("transformers")

CAPTIONS = ["a photo of a cat.", "a diagram", "two red squares and a small blue circle on a grey background", "x"]

# (name, text kwargs, vision kwargs, projection_dim)
CONFIGS = {
    "vit-b-32-sized": (
        dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
        ),
        512,
    ),
    "small": (
        dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2),
        dict(
            hidden_size=96,
            intermediate_size=384,
            num_hidden_layers=2,
            num_attention_heads=3,
            image_size=32,
            patch_size=8,
        ),
        48,
    ),
}


def _hf_model(text_kw, vision_kw, proj, act="quick_gelu"):
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=77, hidden_act=act, **text_kw),
        vision_config=dict(hidden_act=act, **vision_kw),
        projection_dim=proj,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # make the LayerNorms and biases non-trivial too
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layernorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _hf_features(model, images, tokens):
    with torch.no_grad():
        img = model.get_image_features(pixel_values=images)
        txt = model.get_text_features(input_ids=tokens)
    img = getattr(img, "pooler_output", img)  # transformers 5 returns an output object
    txt = getattr(txt, "pooler_output", txt)
    return img, txt


def _assert_same_embeddings(model, hf_model, images, tokens):
    """clipforge and transformers embeddings agree within 1e-5 (max abs); returns clipforge's text ones."""
    ref_img, ref_txt = _hf_features(hf_model, images, tokens)
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(tokens)
    assert (img - ref_img).abs().max() < 1e-5
    assert (txt - ref_txt).abs().max() < 1e-5
    return txt


@pytest.mark.parametrize("name", list(CONFIGS))
def test_load_hf_directory_matches_transformers(tmp_path, name):
    text_kw, vision_kw, proj = CONFIGS[name]
    hf_model = _hf_model(text_kw, vision_kw, proj)
    hf_model.save_pretrained(tmp_path)
    model = clipforge.load(tmp_path)
    size = vision_kw["image_size"]
    _assert_same_embeddings(model, hf_model, torch.randn(2, 3, size, size), clipforge.tokenize(CAPTIONS))
    assert torch.allclose(model.logit_scale, hf_model.logit_scale)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_save_hf_loads_in_transformers(tmp_path, act):
    model = clipforge.create_model("tiny-vit", vision={"act": act}, text={"act": act}).eval()
    clipforge.save(model, tmp_path / "hf", format="hf")
    hf_model = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    tokens = clipforge.tokenize(CAPTIONS)
    txt = _assert_same_embeddings(model, hf_model, torch.randn(3, 3, 64, 64), tokens)
    # and back again
    again = clipforge.load(tmp_path / "hf")
    assert again.config == model.config
    with torch.no_grad():
        assert torch.equal(again.encode_text(tokens), txt)


def test_resnet_cannot_be_saved_as_hf(tmp_path):
    model = clipforge.create_model("tiny-rn")
    with pytest.raises(clipforge.CheckpointError, match="no ResNet"):
        clipforge.save(model, tmp_path / "hf", format="hf")
