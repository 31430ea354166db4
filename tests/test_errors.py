"""Bad input a user can give the command line: each is one line starting `clipforge: error:` that names
the fix, never a traceback, and nothing is written or lost."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from PIL import Image

import clipforge
from clipforge.cli import main

TRAIN = ["train", "--model", "tiny-vit", "--steps", "2", "--batch-size", "8", "--workers", "0", "--no-progress"]


def _one_line_error(capsys, argv, *expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipforge: error:") and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--set", "vision.patch_size=0"], "vision.patch_size must be a positive number"),
        (["--set", "text.layers=1,2"], "text.layers='1,2': expected an integer"),
        (["--set", "vision.width=-64"], "vision.width must be a positive number"),
        (["--set", "embed_dim=0"], "embed_dim must be a positive number"),
        (["--set", "vision=3"], "vision is a section; set its fields"),
        (["--log-every", "0"], "log_every must be positive"),
        (["--workers", "-1"], "cannot be negative"),
        (["--resume", "--overwrite"], "not both"),
        (["--data", "synthetic:split=x"], "split='x' is not one of train, val, heldout"),
        (["--data", "synthetic:size=8"], "at least 16 pixels"),
        (["--data", "synthetic:n=0"], "n=0 must be positive"),
        (["--data", "synthetic:n=many"], "not a valid int"),
        (["--sync-batchnorm"], "needs GPUs"),
    ],
)
def test_bad_training_settings(capsys, tmp_path, extra, expected):
    data = [] if "--data" in extra else ["--data", "synthetic:n=64,size=32"]
    _one_line_error(capsys, [*TRAIN, "--out", str(tmp_path / "run"), *data, *extra], expected)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_bad_data_command(capsys, tmp_path):
    _one_line_error(capsys, ["data", "--out", str(tmp_path / "d"), "--shard-size", "0", "--n", "4"], "--shard-size 0")
    _one_line_error(capsys, ["data", "--out", str(tmp_path / "d"), "--n", "0"], "n=0 must be positive")
    _one_line_error(capsys, ["data", "--out", str(tmp_path / "d"), "--size", "8"], "at least 16 pixels")


def test_non_utf8_caption_files(capsys, tmp_path):
    csv_path = tmp_path / "pairs.csv"
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    csv_path.write_bytes(b"filepath,caption\na.png,caf\xe9 au lait\n")  # Latin-1, not UTF-8
    _one_line_error(capsys, [*TRAIN, "--out", str(tmp_path / "r"), "--data", str(csv_path)], "not UTF-8", "pairs.csv")
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "b.png")
    (folder / "b.txt").write_bytes(b"\xff\xfe a caption in another encoding")
    _one_line_error(capsys, [*TRAIN, "--out", str(tmp_path / "r"), "--data", str(folder)], "b.txt is not UTF-8")


def _tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_without_usable_samples_stops_with_an_error(capsys, tmp_path):
    """A stream whose samples are all unusable (wrong keys, or corrupt) would otherwise loop forever."""
    _tar(tmp_path / "wrong-keys-00000.tar", [(f"{i:04d}.image", b"x") for i in range(5)] + [("0000.text", b"a")])
    _one_line_error(
        capsys,
        [*TRAIN, "--out", str(tmp_path / "r1"), "--data", str(tmp_path / "wrong-keys-00000.tar")],
        "gave no usable sample",
        ".txt",
    )
    _tar(
        tmp_path / "corrupt-00000.tar",
        [(f"{i:04d}.{ext}", b"not an image") for i in range(150) for ext in ("jpg", "txt")],
    )
    _one_line_error(
        capsys,
        [*TRAIN, "--out", str(tmp_path / "r2"), "--data", str(tmp_path / "corrupt-00000.tar")],
        "100 consecutive unusable samples",
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    clipforge.save(clipforge.create_model("tiny-vit", seed=0), path)
    return str(path)


def test_bad_evaluation_data(capsys, tmp_path, ckpt):
    empty = tmp_path / "classes"
    (empty / "cat").mkdir(parents=True)
    (empty / "dog").mkdir()
    _one_line_error(capsys, ["eval", "--model", ckpt, "--task", "zeroshot", "--data", str(empty)], "holds no images")
    csv_path = tmp_path / "empty.csv"
    csv_path.write_text("filepath,caption\n")
    _one_line_error(
        capsys, ["eval", "--model", ckpt, "--task", "retrieval", "--data", str(csv_path)], "no (image, caption) pairs"
    )
    _tar(tmp_path / "eval-00000.tar", [("0001.jpg", b"corrupt bytes"), ("0001.txt", b"a red circle")])
    _one_line_error(
        capsys,
        ["eval", "--model", ckpt, "--task", "retrieval", "--data", str(tmp_path / "eval-00000.tar")],
        "sample 0001",
        "not a readable image",
    )


def test_damaged_checkpoint_configs(capsys, tmp_path, ckpt):
    folder = tmp_path / "dir"
    clipforge.save(clipforge.load(ckpt), folder)
    (folder / "config.json").write_text("{not json")
    _one_line_error(capsys, ["convert", str(folder), str(tmp_path / "o.safetensors")], "config.json is not valid JSON")
    (folder / "config.json").write_text(json.dumps({"clipforge": {"system": "clip", "config": {"embed_dim": -1}}}))
    _one_line_error(capsys, ["convert", str(folder), str(tmp_path / "o.safetensors")], "embed_dim must be a positive")
    (folder / "config.json").write_text(json.dumps({"clipforge": {"system": "clip", "config": {"vison": {}}}}))
    _one_line_error(capsys, ["convert", str(folder), str(tmp_path / "o.safetensors")], "unknown option(s) vison")
    (folder / "config.json").write_text(json.dumps({"clipforge": {"system": "lseg2", "config": {}}}))
    _one_line_error(capsys, ["convert", str(folder), str(tmp_path / "o.safetensors")], "unknown system 'lseg2'")
    (folder / "config.json").write_text(json.dumps({"clipforge": "nonsense"}))
    _one_line_error(capsys, ["convert", str(folder), str(tmp_path / "o.safetensors")], "the file is damaged")
    hf = tmp_path / "hf"
    clipforge.save(clipforge.load(ckpt), hf, format="hf")
    cfg = json.loads((hf / "config.json").read_text())
    cfg["vision_config"]["hidden_act"] = "swish"
    (hf / "config.json").write_text(json.dumps(cfg))
    _one_line_error(capsys, ["convert", str(hf), str(tmp_path / "o.safetensors")], "hidden_act 'swish'")
    assert not (tmp_path / "o.safetensors").exists()


def test_damaged_safetensors_metadata(capsys, tmp_path, ckpt):
    from safetensors.torch import load_file, save_file

    tensors = load_file(ckpt)
    for meta, expected in [
        ({"clipforge_config": "{not json"}, "metadata is not valid JSON"),
        ({"clipforge_config": "[1, 2]"}, "the file is damaged"),
        ({"clipforge_config": json.dumps({"embed_dim": 64}), "clipforge_system": "nope"}, "unknown system 'nope'"),
    ]:
        bad = tmp_path / "bad.safetensors"
        save_file(tensors, str(bad), metadata=meta)
        _one_line_error(capsys, ["convert", str(bad), str(tmp_path / "o.safetensors")], expected)
