"""Parity with OpenAI's own model code (openai/CLIP model.py) for ViT and ModifiedResNet weights."""

import warnings

import pytest
import torch

import clipforge

CAPTIONS = ["a photo of a cat.", "a diagram of a bridge", "an emoji 🚀 and CJK 東京"]

ARCHS = {
    # embed, image, vision_layers, vision_width, patch, ctx, vocab, text width, text heads, text layers
    "vit": (64, 32, 2, 128, 8, 77, 49408, 128, 2, 2),
    "resnet": (64, 64, (1, 2, 1, 1), 32, None, 77, 49408, 128, 2, 2),
}


def _reference(openai_model_module, arch):
    torch.manual_seed(0)
    model = openai_model_module.CLIP(*ARCHS[arch])
    with torch.no_grad():  # perturb everything, including zero-initialised BN gains and running stats
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.dtype.is_floating_point:
                t.add_(0.05 * torch.randn_like(t))
                if "running_var" in name:
                    t.abs_().add_(0.5)
    return model.eval()


def _compare(ours, ref, image_size):
    images = torch.randn(2, 3, image_size, image_size)
    tokens = clipforge.tokenize(CAPTIONS)
    with torch.no_grad():
        assert (ours.encode_image(images) - ref.encode_image(images)).abs().max() < 1e-5
        assert (ours.encode_text(tokens) - ref.encode_text(tokens)).abs().max() < 1e-5
        ref_logits, _ = ref(images, tokens)
        out = ours(images, tokens)
        assert (out.logits_per_image - ref_logits).abs().max() < 1e-4


@pytest.mark.parametrize("arch", list(ARCHS))
def test_openai_state_dict_loads_and_matches(tmp_path, openai_model_module, arch):
    ref = _reference(openai_model_module, arch)
    torch.save(ref.state_dict(), tmp_path / "openai.pt")
    with pytest.warns(UserWarning, match="QuickGELU"):
        ours = clipforge.load(tmp_path / "openai.pt")
    assert ours.config.vision.kind == arch
    assert ours.config.vision.image_size == ARCHS[arch][1]
    _compare(ours, ref, ARCHS[arch][1])


@pytest.mark.parametrize("arch", list(ARCHS))
def test_openai_torchscript_archive_loads_without_running_code(tmp_path, openai_model_module, arch):
    ref = _reference(openai_model_module, arch)
    size = ARCHS[arch][1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(ref, (torch.randn(1, 3, size, size), clipforge.tokenize(["a cat"])), check_trace=False)
    traced.save(str(tmp_path / "jit.pt"))
    ours = clipforge.load(tmp_path / "jit.pt", act="quick_gelu")
    _compare(ours, ref, size)


@pytest.mark.parametrize("preset", ["tiny-vit", "tiny-rn"])
def test_saved_openai_layout_loads_in_openai_build_model(tmp_path, openai_model_module, preset):
    # OpenAI's build_model assumes QuickGELU and heads = width // 64
    ours = clipforge.create_model(
        preset, vision={"act": "quick_gelu", "head_width": 64}, text={"act": "quick_gelu", "head_width": 64}
    ).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.02 * torch.randn_like(p))
    clipforge.save(ours, tmp_path / "w.pt", format="openai")
    sd = torch.load(tmp_path / "w.pt", weights_only=True)
    ref = openai_model_module.build_model(sd).float().eval()  # build_model infers the architecture (strict)
    ref.load_state_dict(sd)  # and casts to fp16: reload the exact fp32 weights
    _compare(ours, ref, ours.image_size)
