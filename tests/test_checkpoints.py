import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

import clipforge

CAPTIONS = ["a cat", "two red squares"]


def _model(name="tiny-vit"):
    model = clipforge.create_model(name, seed=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def _same_outputs(a, b):
    size = a.image_size
    images = torch.randn(2, 3, size, size)
    tokens = clipforge.tokenize(CAPTIONS)
    with torch.no_grad():
        assert torch.equal(a.encode_image(images), b.encode_image(images))
        assert torch.equal(a.encode_text(tokens), b.encode_text(tokens))
    assert a.config == b.config


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
@pytest.mark.parametrize("target", ["model.safetensors", "ckpt_dir"])
def test_own_format_roundtrip(tmp_path, name, target):
    model = _model(name)
    path = clipforge.save(model, tmp_path / target)
    loaded = clipforge.load(path)
    _same_outputs(model, loaded)
    assert not loaded.training


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    model = _model()
    clipforge.save(model, tmp_path / "m.safetensors")
    before = (tmp_path / "m.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr("clipforge.checkpoints.save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        clipforge.save(_model("tiny-vit"), tmp_path / "m.safetensors")
    assert (tmp_path / "m.safetensors").read_bytes() == before  # old checkpoint intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module", "safetensors", "bin"])
def test_openclip_style_state_dicts(tmp_path, wrap):
    model = _model("tiny-vit")
    clipforge.save(model, tmp_path / "oa.pt", format="openai")
    sd = torch.load(tmp_path / "oa.pt", weights_only=True)
    sd["attn_mask"] = torch.full((77, 77), float("-inf")).triu(1)  # older OpenCLIP saved this buffer
    if wrap == "state_dict":
        path = tmp_path / "epoch_1.pt"
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif wrap == "module":
        path = tmp_path / "m.pt"
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    elif wrap == "safetensors":
        path = tmp_path / "open_clip_model.safetensors"
        save_file(sd, path)
    elif wrap == "bin":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(sd, path)
    else:
        path = tmp_path / "oa.pt"
        torch.save(sd, path)
    loaded = clipforge.load(path, model=model.config)
    _same_outputs(model, loaded)


def test_activation_choice_for_ambiguous_weights(tmp_path):
    # GELU weights with 64-wide heads: everything but the activation can be read from the shapes
    model = clipforge.create_model("tiny-vit", vision={"head_width": 64}, text={"head_width": 64}).eval()
    clipforge.save(model, tmp_path / "w.safetensors", format="openai")
    with pytest.warns(UserWarning, match="QuickGELU"):
        guessed = clipforge.load(tmp_path / "w.safetensors")
    assert guessed.config.text.act == "quick_gelu"
    named = clipforge.load(tmp_path / "w.safetensors", act="gelu")
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(named.encode_image(images), model.encode_image(images), atol=1e-6)
        assert not torch.allclose(guessed.encode_image(images), model.encode_image(images), atol=1e-4)


def test_zero_shot_identical_across_formats(tmp_path):
    model = _model("tiny-vit")
    clipforge.save(model, tmp_path / "own.safetensors")
    clipforge.save(model, tmp_path / "hf", format="hf")
    clipforge.save(model, tmp_path / "oa.pt", format="openai")
    images = torch.randn(4, 3, 64, 64)
    tokens = clipforge.tokenize(["a red circle", "a blue square", "a green star"])
    outs = []
    for path in (tmp_path / "own.safetensors", tmp_path / "hf", tmp_path / "oa.pt"):
        m = clipforge.load(path, model=model.config) if path.suffix == ".pt" else clipforge.load(path)
        with torch.no_grad():
            outs.append(m(images, tokens).logits_per_image)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


# ----------------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(clipforge.CheckpointError, match="not found"):
        clipforge.load(tmp_path / "nope.pt")


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, I am not a checkpoint\n")
    with pytest.raises(clipforge.CheckpointError, match="not a checkpoint clipforge can read"):
        clipforge.load(path)


def test_state_dict_of_another_model_is_not_clip(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), path)
    message = r"not a checkpoint of any registered system \((\w+, )*clip(, \w+)*\)"
    with pytest.raises(clipforge.CheckpointError, match=message):
        clipforge.load(path)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(clipforge.CheckpointError, match="weights_only"):
        clipforge.load(path)


def test_truncated_safetensors(tmp_path):
    clipforge.save(_model(), tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "bad.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(clipforge.CheckpointError, match="not a readable safetensors"):
        clipforge.load(tmp_path / "bad.safetensors")


def test_wrong_architecture_lists_mismatched_shapes(tmp_path):
    clipforge.save(_model("tiny-vit"), tmp_path / "tiny.safetensors")
    with pytest.raises(clipforge.CheckpointError) as err:
        clipforge.load(tmp_path / "tiny.safetensors", model="small-vit")
    msg = str(err.value)
    assert "does not match the model architecture" in msg
    assert "shape mismatch" in msg and "visual.conv1.weight: checkpoint (128, 3, 8, 8) vs model (256, 3, 8, 8)" in msg
    assert "missing" in msg and "text.transformer.resblocks.5.*" in msg and "visual.transformer.resblocks.4.*" in msg


def test_vit_weights_into_resnet_preset(tmp_path):
    clipforge.save(_model("tiny-vit"), tmp_path / "tiny.safetensors")
    with pytest.raises(clipforge.CheckpointError, match="unexpected.*visual.class_embedding"):
        clipforge.load(tmp_path / "tiny.safetensors", model="tiny-rn")


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {}}))
    with pytest.raises(clipforge.CheckpointError, match="no weights file"):
        clipforge.load(tmp_path)


def test_unknown_save_format(tmp_path):
    with pytest.raises(clipforge.CheckpointError, match="unknown format"):
        clipforge.save(_model(), tmp_path / "x", format="onnx")


def test_a_failed_directory_save_keeps_the_old_directory(tmp_path, monkeypatch):
    import os

    folder = tmp_path / "model"
    clipforge.save(_model(), folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    calls = []
    real = os.replace

    def second_move_fails(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # moving the new folder in
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", second_move_fails)
    with pytest.raises(clipforge.CheckpointError, match="could not write"):
        clipforge.save(clipforge.create_model("tiny-vit", seed=5), folder)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing else left behind


def test_a_sigmoid_loss_model_round_trips_in_the_openai_layout(tmp_path):
    model = _model()
    model.add_logit_bias(-7.5)
    clipforge.save(model, tmp_path / "s.pt", format="openai")
    back = clipforge.load(tmp_path / "s.pt", model=model.config.replace(init_logit_bias=None))
    assert back.config.init_logit_bias == -7.5 and float(back.logit_bias.detach()) == -7.5
    with pytest.raises(clipforge.CheckpointError, match="no logit bias"):
        clipforge.save(model, tmp_path / "hf", format="hf")


def test_training_checkpoints_load_by_their_stored_system_and_foreign_ones_are_not_misrouted(tmp_path):
    from clipforge.errors import CheckpointError
    from clipforge.settings import to_dict

    model = _model()
    sd = model.state_dict()
    path = tmp_path / "last.pt"
    torch.save({"model": sd, "system": "clip", "model_config": to_dict(model.config), "step": 3}, path)
    _same_outputs(model, clipforge.load(path))  # the stored config, not a guess from the keys
    # an unknown system, or a config that is not JSON: no metadata; the keys decide as for any state dict
    for extra in ({"system": "no-such-system", "model_config": {}}, {"system": "clip", "model_config": {"x": sd}}):
        torch.save({"model": sd, **extra}, path)
        guessed = clipforge.load(path)  # a CLIP's keys: the CLIP importer reads the weights (it guesses the rest)
        assert type(guessed) is type(model)
        assert all(torch.equal(v, guessed.state_dict()[k]) for k, v in sd.items())
        torch.save({"model": {"w": torch.zeros(2)}, **extra}, path)
        with pytest.raises(CheckpointError, match="not a checkpoint of any registered system"):
            clipforge.load(path)
