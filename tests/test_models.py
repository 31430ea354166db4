"""Contract tests over every registered preset, plus config validation and model API checks."""

import pytest
import torch

import clipforge
from clipforge.presets import get_config

LARGE = {"RN50x4", "RN50x16", "RN50x64", "ViT-L-14", "ViT-L-14-336", "RN101"}
# A large preset's `-gelu` twin differs only in the activation (checked below), so the full
# forward/backward contract runs once per large architecture; small presets run both activations.
PRESETS = [
    pytest.param(name, marks=pytest.mark.slow) if name in LARGE else name
    for name in clipforge.list_models()
    if name.removesuffix("-gelu") not in LARGE or not name.endswith("-gelu")
]


@pytest.mark.parametrize("name", sorted(LARGE))
def test_large_gelu_twins_differ_only_in_activation(name):
    base, twin = get_config(name).to_dict(), get_config(f"{name}-gelu").to_dict()
    assert base != twin
    for tower in ("vision", "text"):
        if "act" in base[tower]:
            assert (base[tower].pop("act"), twin[tower].pop("act")) == ("quick_gelu", "gelu")
    assert base == twin


def _step(model, images, tokens):
    model.zero_grad(set_to_none=True)
    out = model(images, tokens)
    loss = clipforge.clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
    loss.backward()
    grads = {n: p.grad.clone() if p.grad is not None else None for n, p in model.named_parameters()}
    return out, loss.detach(), grads


@pytest.mark.parametrize("name", PRESETS)
def test_preset_contract(name):
    cfg = get_config(name)
    model = clipforge.create_model(name, seed=0).train()
    # OpenAI's init zeroes each ResNet block's last BN gain, which makes the branch's gradient exactly
    # zero at step 0; give those gains a value so the test can see every parameter is connected.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bn3.weight"):
                p.fill_(0.1)
    size = cfg.vision.image_size
    images = torch.randn(2, 3, size, size)
    tokens = clipforge.tokenize(["a photo of a cat", "a diagram of two red squares"])[:, :12]
    out, loss, grads = _step(model, images, tokens)
    assert out.image_embeds.shape == (2, cfg.embed_dim) and out.text_embeds.shape == (2, cfg.embed_dim)
    assert torch.isfinite(out.image_embeds).all() and torch.isfinite(out.text_embeds).all()
    assert torch.isfinite(loss)
    no_grad = [n for n, g in grads.items() if g is None or not torch.isfinite(g).all() or not g.abs().sum() > 0]
    assert not no_grad, f"parameters without a (finite, non-zero) gradient: {no_grad[:10]}"
    with torch.no_grad():
        assert model.encode_image(images).shape == (2, cfg.embed_dim)
        assert model.encode_text(tokens).shape == (2, cfg.embed_dim)
    # gradient checkpointing recomputes activations but must not change outputs or gradients
    model.set_grad_checkpointing(True)
    out_ckpt, loss_ckpt, grads_ckpt = _step(model, images, tokens)
    assert torch.allclose(out_ckpt.image_embeds, out.image_embeds, atol=1e-5)
    assert torch.allclose(out_ckpt.text_embeds, out.text_embeds, atol=1e-5)
    assert torch.allclose(loss_ckpt, loss, atol=1e-6)
    for n, g in grads.items():
        assert torch.allclose(grads_ckpt[n], g, rtol=1e-3, atol=1e-6), n


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_forward_intermediates(name):
    model = clipforge.create_model(name).eval()
    cfg = model.config
    images = torch.randn(2, 3, cfg.vision.image_size, cfg.vision.image_size)
    tokens = clipforge.tokenize(["a cat", "a dog"])
    with torch.no_grad():
        inter = model.forward_intermediates(images, tokens)
        assert torch.allclose(inter["image_embeds"], model.encode_image(images), atol=1e-5)
        assert torch.allclose(inter["text_embeds"], model.encode_text(tokens), atol=1e-5)
    assert len(inter["text_intermediates"]) == cfg.text.layers
    assert inter["text_intermediates"][0].shape == (2, 77, cfg.text.width)
    if cfg.vision.kind == "vit":
        grid = cfg.vision.image_size // cfg.vision.patch_size
        assert len(inter["image_intermediates"]) == cfg.vision.layers
        assert inter["image_intermediates"][-1].shape == (2, grid * grid + 1, cfg.vision.width)
        assert inter["image_tokens"].shape == (2, grid * grid + 1, cfg.embed_dim)
    else:
        assert len(inter["image_intermediates"]) == 5  # stem + 4 stages
        assert inter["image_intermediates"][-1].shape[-1] == cfg.vision.image_size // 32


def test_trimmed_text_gives_same_embedding():
    """The causal tower pooled at end-of-text ignores trailing padding."""
    model = clipforge.create_model("tiny-vit").eval()
    tokens = clipforge.tokenize(["a photo of a cat", "a much longer caption about a small red square"])
    longest = int((tokens != 0).sum(dim=1).max())
    with torch.no_grad():
        assert torch.allclose(model.encode_text(tokens), model.encode_text(tokens[:, :longest]), atol=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_pooled_forward_equals_pooling_every_token(checkpointing):
    """encode_image/encode_text skip work the pooled token does not depend on (the last block's other
    tokens; text padding after end-of-text): embeddings and every gradient equal the full computation."""
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit").train()
    model.set_grad_checkpointing(checkpointing)
    tokens = clipforge.tokenize(["a", "a photo of a cat", "a much longer caption about a small red square", ""])
    tokens = tokens[:, : int((tokens != 0).sum(dim=1).max()) + 3]  # extra padding columns too
    images = torch.randn(4, 3, model.image_size, model.image_size)

    def full():
        img = model.visual.ln_post(model.visual.tokens(images)[:, 0]) @ model.visual.proj
        return img, model.text.pool(model.text.tokens(tokens), tokens)

    results = []
    for fn in (lambda: (model.encode_image(images), model.encode_text(tokens)), full):
        model.zero_grad(set_to_none=True)
        img, txt = fn()
        (img.square().sum() + (txt * torch.linspace(-1, 1, txt.shape[1])).sum()).backward()
        results.append((img.detach(), txt.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (img_a, txt_a, grads_a), (img_b, txt_b, grads_b) = results
    assert torch.allclose(img_a, img_b, atol=1e-5) and torch.allclose(txt_a, txt_b, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_b.items():
        assert (grads_a[name] is None) == (grad is None), name
        if grad is not None:
            assert (grads_a[name] - grad).abs().max() <= 1e-5 * grad.abs().max(), name  # fp32 summation order
    assert grads_b["text.positional_embedding"][tokens.shape[1] :].abs().sum() == 0


def test_initialisation_follows_openai():
    model = clipforge.create_model("ViT-B-32", seed=0)
    assert abs(model.text.token_embedding.weight.std().item() - 0.02) < 1e-3
    assert abs(model.text.positional_embedding.std().item() - 0.01) < 1e-3
    assert model.logit_scale.item() == pytest.approx(torch.log(torch.tensor(1 / 0.07)).item())
    block = model.text.transformer.resblocks[0]
    width, layers = 512, 12
    assert block.attn.in_proj_weight.std().item() == pytest.approx(width**-0.5, rel=0.02)
    assert block.attn.out_proj.weight.std().item() == pytest.approx(width**-0.5 * (2 * layers) ** -0.5, rel=0.02)


def test_logit_scale_is_clipped_at_100():
    model = clipforge.create_model("tiny-vit")
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) ~ 22026
    assert model.scale().item() == pytest.approx(100.0)


def test_seeded_creation_is_reproducible():
    a = clipforge.create_model("tiny-vit", seed=3)
    b = clipforge.create_model("tiny-vit", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_aliases_and_overrides():
    assert clipforge.get_config("ViT-B/32") == clipforge.get_config("ViT-B-32")
    assert clipforge.get_config("ViT-B-32-quickgelu") == clipforge.get_config("ViT-B-32")
    assert clipforge.get_config("ViT-L/14@336px").vision.image_size == 336
    assert clipforge.get_config("ViT-B-32-gelu").text.act == "gelu"
    model = clipforge.create_model("tiny-vit", embed_dim=64, text={"layers": 2})
    assert model.config.embed_dim == 64 and len(model.text.transformer.resblocks) == 2


def test_unknown_model_and_options_are_clear_errors():
    with pytest.raises(clipforge.UnknownModelError, match="ViT-B-32"):
        clipforge.create_model("ViT-B-23")
    with pytest.raises(clipforge.ConfigError, match=r"text\.layrs.*valid: .*text\.layers"):
        clipforge.create_model("tiny-vit", text={"layrs": 2})
    with pytest.raises(clipforge.ConfigError, match="embed_dimm"):
        clipforge.create_model("tiny-vit", embed_dimm=3)
    with pytest.raises(clipforge.ConfigError, match="divisible"):
        clipforge.create_model("tiny-vit", vision={"patch_size": 7})


def test_wrong_input_shapes_are_clear_errors():
    model = clipforge.create_model("tiny-vit")
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        model.encode_image(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="L <= 77"):
        model.encode_text(torch.zeros(1, 80, dtype=torch.long))
