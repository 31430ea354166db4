"""A folder saved with format="hf" is a complete transformers model: CLIPModel, CLIPProcessor and the
zero-shot image classification pipeline load it as it is (offline), and the pipeline's probabilities
equal `clipforge zeroshot`'s on the same images and labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import clipforge
from clipforge.cli import main

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    model = clipforge.create_model("tiny-vit", seed=3)  # 64 px input
    clipforge.save(model, root / "model", format="hf")
    return model, root


def _images(root):
    """Scenes of the synthetic world at sizes whose resize and centre crop land on the same pixels in
    both libraries (transformers crops at floor((h - n) / 2), OpenAI and clipforge at round(...))."""
    from clipforge.data.synthetic import SyntheticWorld

    paths = []
    for i, (w, h) in enumerate([(64, 64), (96, 80), (80, 120), (130, 64), (50, 50)]):
        path = root / f"img{i}.png"
        SyntheticWorld(8, 64, "val", seed=i)[i].image.resize((w, h)).save(path)
        paths.append(str(path))
    return paths


def test_the_folder_loads_in_transformers_as_it_is(saved, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, root = saved
    folder = root / "model"
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    } <= {p.name for p in folder.iterdir()}
    processor = transformers.CLIPProcessor.from_pretrained(str(folder))
    assert processor.tokenizer.model_max_length == 77
    texts = ["a photo of a cat.", "two red squares", "A diagram, of 3 BIG shapes!"]
    tok = clipforge.get_tokenizer()
    assert processor.tokenizer(texts)["input_ids"] == [[49406, *tok.encode(t), 49407] for t in texts]
    assert clipforge.load(folder).config == model.config  # and clipforge reads its own preprocessing back


def test_pipeline_probabilities_equal_clipforge_zeroshot(saved, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, root = saved
    paths = _images(tmp_path)
    labels = ["red circle", "blue square", "green star", "yellow triangle"]
    pipe = transformers.pipeline("zero-shot-image-classification", model=str(root / "model"))
    theirs = [{r["label"]: r["score"] for r in pipe(Image.open(p), candidate_labels=labels)} for p in paths]
    template = tmp_path / "template.txt"
    template.write_text("This is a photo of {}.\n")  # the pipeline's hypothesis template
    assert (
        main(
            [
                "zeroshot",
                *paths,
                "--model",
                str(root / "model"),
                "--labels",
                ",".join(labels),
                "--templates",
                str(template),
                "--top",
                "4",
                "--json",
            ]
        )
        == 0
    )
    ours = [{p["label"]: p["prob"] for p in r["predictions"]} for r in json.loads(capsys.readouterr().out)]
    for a, b in zip(theirs, ours):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([a[k] for k in labels], [b[k] for k in labels], atol=1.5e-4)  # ours: 4 decimals
    spread = max(max(a.values()) - min(a.values()) for a in theirs)
    assert spread > 0.01  # the probabilities differ between labels, so the comparison has teeth
