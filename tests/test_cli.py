import json

import pytest

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


@pytest.mark.parametrize(
    "argv, env, expected",
    [
        (["quickstart"], {}, "PASSIVE"),
        (["train", "--data", "synthetic"], {}, "PASSIVE"),
        (["study", "efficiency"], {}, "PASSIVE"),
        (["train", "--workers", "0"], {}, None),  # no workers: nothing competes
        (["eval"], {}, None),  # not a training command
        (["quickstart"], {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),  # the user's choice wins
    ],
)
def test_console_training_commands_wait_passively(argv, env, expected):
    """The console entry point chooses the OpenMP wait policy before torch loads, only for training."""
    import os
    import subprocess
    import sys

    code = (
        "import os, sys; from clipforge.cli import _passive_waits_for_training; "
        f"assert 'torch' not in sys.modules; _passive_waits_for_training({argv!r}); "
        "print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)


def test_import_has_no_side_effects():
    """`import clipforge` changes no environment variable and loads no torch, whatever sys.argv says."""
    import os
    import subprocess
    import sys

    code = (
        "import os, sys; sys.argv = ['/venv/bin/clipforge', 'train']; before = dict(os.environ); "
        "import clipforge; assert dict(os.environ) == before, 'environment changed'; "
        "assert 'torch' not in sys.modules, 'torch imported'; clipforge.create_model('tiny-vit'); "
        "assert 'torch' in sys.modules; print('ok')"
    )
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
