import json

import clipforge
from clipforge.cli import main


def test_demo_runs(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "RANDOMLY INITIALISED tiny-vit" in out and "top-1 accuracy on these 4 images" in out


def test_models_lists_every_preset(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in clipforge.list_models())


def test_convert_to_hf_and_back(tmp_path, capsys):
    model = clipforge.create_model("tiny-vit", seed=0)
    clipforge.save(model, tmp_path / "m.safetensors")
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "hf" and (tmp_path / "hf" / "config.json").exists()
    assert clipforge.load(tmp_path / "hf").config == model.config


def test_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipforge: error: checkpoint not found") and "Traceback" not in err
