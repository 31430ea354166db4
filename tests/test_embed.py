"""`clipforge embed`: clip-retrieval's layout on disk, exact search equal to encode_image + brute force,
resume after a kill, damaged images skipped and counted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import clipforge
from clipforge.embed import EmbeddingIndex, embed_images, embed_texts
from clipforge.errors import ConfigError

pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def model():
    return clipforge.create_model("tiny-rn", seed=0).eval()


def _encode(model, images):
    with torch.no_grad():
        return torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1).numpy()


def test_synthetic_embeddings_load_in_numpy_and_search_equals_brute_force(model, tmp_path):
    r = embed_images(model, "synthetic:n=50,seed=3", tmp_path, batch_size=16, shard_size=20, workers=0,
                     precision="fp32", dtype="float32", progress=False)  # fmt: skip
    assert (r.embedded, r.skipped, r.resumed_from) == (50, 0, 0)
    shards = [np.load(tmp_path / "img_emb" / f"img_emb_{k}.npy") for k in range(3)]
    assert [len(s) for s in shards] == [20, 20, 10]
    meta = pq.read_table(tmp_path / "metadata" / "metadata_1.parquet").to_pydict()
    assert meta["image_path"][0] == "synthetic/val/20" and meta["caption"][0]
    # the stored rows are encode_image of the same preprocessed images
    from clipforge.data.synthetic import SyntheticWorld
    from clipforge.transforms import image_transform

    world = SyntheticWorld(50, 64, "val", 3)
    t = image_transform(64)
    images = torch.stack([t(world[i].image) for i in range(50)])
    direct = _encode(model, images)
    np.testing.assert_allclose(np.concatenate(shards), direct, atol=1e-5)
    # exact search: the same neighbours as brute force over encode_image
    index = EmbeddingIndex(tmp_path)
    queries = np.random.default_rng(0).normal(size=(5, direct.shape[1])).astype(np.float32)
    scores, idx = index.search(queries, k=7)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    want = np.argsort(-(q @ direct.T), axis=1, kind="stable")[:, :7]
    assert (idx == want).all() and np.all(np.diff(scores, axis=1) <= 1e-7)
    assert index.metadata["image_path"][idx[0, 0]] == f"synthetic/val/{want[0, 0]}"
    # captions were embedded alongside, row for row
    text = np.concatenate([np.load(tmp_path / "text_emb" / f"text_emb_{k}.npy") for k in range(3)])
    tokens = clipforge.tokenize([world[0].caption], context_length=model.config.text.context_length)
    with torch.no_grad():
        want_text = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1).numpy()
    np.testing.assert_allclose(text[:1], want_text, atol=1e-5)
    info = json.loads((tmp_path / "embed.json").read_text())
    assert info["embedded"] == 50 and info["per_second"] > 0


def test_a_killed_run_resumes_at_the_first_missing_shard(model, tmp_path):
    common = {"batch_size": 8, "shard_size": 10, "workers": 0, "precision": "fp32", "progress": False}
    embed_images(model, "synthetic:n=35", tmp_path / "full", **common)
    embed_images(model, "synthetic:n=35", tmp_path / "cut", **common)
    # as if killed while writing shard 2: its metadata (written last) never appeared
    (tmp_path / "cut" / "metadata" / "metadata_2.parquet").unlink()
    (tmp_path / "cut" / "metadata" / "metadata_3.parquet").unlink()
    r = embed_images(model, "synthetic:n=35", tmp_path / "cut", **common)
    assert r.resumed_from == 20 and r.embedded == 15
    for k in range(4):
        a = np.load(tmp_path / "full" / "img_emb" / f"img_emb_{k}.npy")
        b = np.load(tmp_path / "cut" / "img_emb" / f"img_emb_{k}.npy")
        assert a.dtype == np.float16 and np.array_equal(a, b)
    again = embed_images(model, "synthetic:n=35", tmp_path / "cut", **common)
    assert again.embedded == 0 and again.resumed_from == 40


def _image_folder(tmp_path, n, damaged):
    """`n` synthetic scenes as tmp_path/images/{i}.png, the files in `damaged` overwritten with its bytes."""
    from clipforge.data.synthetic import SyntheticWorld

    folder = tmp_path / "images"
    folder.mkdir()
    world = SyntheticWorld(n, 64, "val", 0)
    for i in range(n):
        world[i].image.save(folder / f"{i}.png")
    for i, data in damaged.items():
        (folder / f"{i}.png").write_bytes(data)
    return folder


def test_folder_with_a_damaged_image_and_a_texts_file(model, tmp_path):
    folder = _image_folder(tmp_path, 6, {3: b"\x89PNG broken"})
    r = embed_images(model, str(folder), tmp_path / "out", batch_size=4, workers=1, progress=False)
    assert (r.embedded, r.skipped) == (5, 1)
    index = EmbeddingIndex(tmp_path / "out")
    assert len(index) == 5 and not any(p.endswith("3.png") for p in index.metadata["image_path"])
    assert not (tmp_path / "out" / "text_emb" / "text_emb_0.npy").exists()  # a plain folder has no captions
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\n\na blue star\n")
    t = embed_texts(model, texts, tmp_path / "texts", precision="fp32", dtype="float32")
    assert t.embedded == 2
    tindex = EmbeddingIndex(tmp_path / "texts", kind="text")
    assert tindex.metadata["caption"] == ["a red circle", "a blue star"]
    _, idx = tindex.search(tindex.embeddings[1:2], k=1)
    assert idx[0, 0] == 1


def test_embed_command_and_bad_input(tmp_path, capsys):
    from clipforge.cli import main

    path = clipforge.save(clipforge.create_model("tiny-rn", seed=0), tmp_path / "m.safetensors")
    assert main(["embed", "--model", str(path), "--images", "synthetic:n=12", "--out", str(tmp_path / "e"),
                 "--batch-size", "5", "--workers", "0", "--no-progress"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["embedded"] == 12
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\na blue star\n")
    args = ["embed", "--model", str(path), "--texts", str(texts), "--out", str(tmp_path / "t"), "--batch-size", "1"]
    assert main([*args, "--compile"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["embedded"] == 2
    assert "--compile applies to the image tower" in err  # said, not silently dropped
    with pytest.raises(ConfigError, match="image source"):
        embed_images(clipforge.create_model("tiny-rn"), str(tmp_path / "nothing.bin"), tmp_path / "x")
    assert not (tmp_path / "x").exists()  # a bad source writes nothing
    with pytest.raises(ConfigError, match="no complete img_emb"):
        EmbeddingIndex(tmp_path / "x")


def test_trailing_undecodable_images_still_complete_the_run_and_settings_must_match(model, tmp_path):
    # the last two shards (of size 2) hold only damaged files
    folder = _image_folder(tmp_path, 7, {4: b"junk", 5: b"junk", 6: b"junk"})
    common = {"batch_size": 4, "shard_size": 2, "workers": 0, "progress": False}
    r = embed_images(model, str(folder), tmp_path / "out", **common)
    assert (r.embedded, r.skipped) == (4, 3)
    assert sorted(p.name for p in (tmp_path / "out" / "metadata").iterdir()) == [
        f"metadata_{k}.parquet" for k in range(4)
    ]
    empty = np.load(tmp_path / "out" / "img_emb" / "img_emb_3.npy")
    assert empty.shape == (0, model.config.embed_dim) and empty.dtype == np.float16
    again = embed_images(model, str(folder), tmp_path / "out", **common)  # finished: nothing more to do
    assert again.embedded == 0 and len(list((tmp_path / "out" / "metadata").iterdir())) == 4
    with pytest.raises(ConfigError, match="other settings.*shard_size"):
        embed_images(model, str(folder), tmp_path / "out", **{**common, "shard_size": 3})


def test_bf16_embeddings_agree_with_fp32(model, tmp_path):
    common = {"batch_size": 16, "workers": 0, "progress": False, "dtype": "float32"}
    embed_images(model, "synthetic:n=20", tmp_path / "fp32", precision="fp32", **common)
    embed_images(model, "synthetic:n=20", tmp_path / "bf16", precision="bf16", **common)
    a = np.load(tmp_path / "fp32" / "img_emb" / "img_emb_0.npy")
    b = np.load(tmp_path / "bf16" / "img_emb" / "img_emb_0.npy")
    assert not np.array_equal(a, b)  # bf16 did run
    assert (a * b).sum(axis=1).min() > 0.995
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left as it was
