"""The efficiency study: each objective's zero-shot scorer on cases with a known answer, the ratio
arithmetic on hand-computed curves, and a shortened study through the CLI."""

import json
import math

import pytest
import torch

import clipforge
from clipforge.cli import main
from clipforge.errors import ConfigError
from clipforge.presets import get_config
from clipforge.systems.clip.objectives import (
    EOT,
    SOT,
    BagOfWordsCLIP,
    BagOfWordsModel,
    CaptioningModel,
    Vocabulary,
    build_objective,
)
from clipforge.systems.clip.study import efficiency_ratios, images_to_reach, zero_shot_logits

CONFIG = get_config("tiny-rn").replace(text={"layers": 1})
PROMPTS = ["a photo of a circle.", "a photo of a square.", "a photo of a star."]
CLASSES = ["circle", "square", "star"]


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.from_captions(PROMPTS + ["a red circle", "two shapes"])


def _ids(vocab, text):
    return vocab(clipforge.tokenize([text])[0])


def test_vocabulary_maps_bpe_to_compact_ids(vocab):
    ids = _ids(vocab, "a photo of a circle.")
    n = int((ids != 0).sum())
    assert ids[0] == SOT and ids[n - 1] == EOT and (ids[n:] == 0).all()
    assert (ids[1 : n - 1] >= 4).all() and ids.max() < vocab.size
    assert _ids(vocab, "a photo of a hexagon")[5] == 1  # unseen word -> <unk>
    bag = vocab.words(ids[None])[0]
    word = int(_ids(vocab, "a")[1])
    assert bag[word] == 2 and bag.sum() == n - 2  # "a" twice; start/end/pad not counted


def test_bow_prediction_scorer_sums_word_log_probs(vocab):
    model = BagOfWordsModel(CONFIG, vocab).eval()
    logits = torch.randn(3, vocab.size)
    for i, name in enumerate(CLASSES):  # image i puts its mass on class word i
        logits[i, _ids(vocab, name)[1]] += 8.0
    model.word_logits = lambda feats: logits
    scores = model.zero_shot_logits(torch.zeros(3, CONFIG.embed_dim), CLASSES, ["a photo of a {}."])
    assert scores.argmax(1).tolist() == [0, 1, 2]
    logp = logits.log_softmax(-1)
    ids = _ids(vocab, "a photo of a square.")
    expected = sum(logp[0, int(t)] for t in ids if int(t) >= 4)
    assert scores[0, 1].item() == pytest.approx(expected.item(), rel=1e-5)


def test_bow_contrastive_scorer_matches_embeddings(vocab):
    model = BagOfWordsCLIP(CONFIG, vocab).eval()
    d = CONFIG.embed_dim
    with torch.no_grad():
        model.word_embedding.weight.zero_()  # template words carry nothing; class word i -> axis i
        for i, name in enumerate(CLASSES):
            model.word_embedding.weight[_ids(vocab, name)[1], i] = 1.0
        model.text_projection.weight.copy_(torch.eye(d, CONFIG.text.width))
    feats = torch.eye(3, d)[[2, 0, 1]]
    scores = zero_shot_logits(model, feats, CLASSES, "synthetic")
    assert scores.argmax(1).tolist() == [2, 0, 1]


def test_captioning_likelihood_is_the_chain_rule_and_learns_a_known_answer(vocab):
    torch.manual_seed(0)
    model = CaptioningModel(CONFIG, vocab, prefix=2)
    feats = torch.randn(3, CONFIG.embed_dim)
    ids = vocab(clipforge.tokenize(PROMPTS))[:, :8]
    # sequence_nll equals the sum of per-token -log p computed one prefix at a time (no shift errors)
    model.eval()
    with torch.no_grad():
        nll = model.sequence_nll(feats, ids)
        for b in range(3):
            n = int((ids[b] != 0).sum())
            manual = -sum(
                model.token_logits(feats[b : b + 1], ids[b : b + 1, :t])[0, -1].log_softmax(-1)[ids[b, t]]
                for t in range(1, n)
            )
            assert nll[b].item() == pytest.approx(manual.item(), rel=1e-4)
    # fit image i -> caption i, then the scorer must pick class i for image i
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        model.sequence_nll(feats, ids).mean().backward()
        opt.step()
    model.eval()
    scores = model.zero_shot_logits(feats, CLASSES, ["a photo of a {}."])
    assert scores.argmax(1).tolist() == [0, 1, 2]
    assert torch.allclose(scores.diagonal(), -model.sequence_nll(feats, ids).detach(), rtol=1e-4)


def test_objectives_share_the_image_tower_and_train_with_the_generic_loop(vocab):
    ref = clipforge.create_model(CONFIG, seed=3).visual.state_dict()
    images, tokens = torch.randn(4, 3, 64, 64), clipforge.tokenize(PROMPTS + ["a red circle"])[:, :9]
    for name in ("captioning", "bow-prediction", "bow-contrastive", "clip"):
        task = build_objective(name, CONFIG, vocab, seed=3)
        assert all(torch.equal(a, ref[k]) for k, a in task.model.visual.state_dict().items())
        losses = task.loss(task.forward(task.model, {"images": images, "tokens": tokens}))
        total = sum(losses.values())
        assert math.isfinite(total.item())
        total.backward()
        assert all(p.grad is not None for p in task.model.visual.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="unknown objective"):
        build_objective("mlm", CONFIG, vocab)


def test_images_to_reach_and_ratios_on_hand_computed_curves():
    curve = [(0, 0.1), (1000, 0.3), (2000, 0.5)]
    assert images_to_reach(curve, 0.4) == pytest.approx(1500)
    assert images_to_reach(curve, 0.1) == 0 and images_to_reach(curve, 0.6) is None
    curves = {
        "captioning": [(0, 0.1), (1000, 0.2), (2000, 0.3)],
        "bow-prediction": [(0, 0.1), (1000, 0.3), (2000, 0.5)],
        "bow-contrastive": [(0, 0.1), (1000, 0.12), (2000, 0.13)],
    }
    rows = efficiency_ratios(curves, chance=0.1)
    first, second = rows
    assert (first["slower"], first["faster"]) == ("captioning", "bow-prediction")
    assert first["target_accuracy"] == pytest.approx(0.3)
    assert first["images_slower"] == pytest.approx(2000) and first["images_faster"] == pytest.approx(1000)
    assert first["ratio"] == pytest.approx(2.0) and first["paper_speedup"] == 3.0
    assert second["ratio"] is None and "chance" in second["note"]
    # an objective that scores the common accuracy before training has no speed-up to report (not 0x)
    curves = {"captioning": [(0, 0.5), (1000, 0.5)], "bow-prediction": [(0, 0.1), (1000, 0.6)]}
    (row,) = efficiency_ratios(curves, chance=0.1)
    assert row["ratio"] is None and "before training" in row["note"] and row["images_slower"] == 0


def test_short_study_through_the_cli(tmp_path, capsys):
    out = tmp_path / "study"
    assert (
        main(
            [
                "study",
                "efficiency",
                "--out",
                str(out),
                "--images",
                "192",
                "--batch-size",
                "32",
                "--evals",
                "2",
                "--eval",
                "heldout=synthetic:label=composite,split=heldout,n=24",
                "--eval",
                "seen=synthetic:label=shape,split=val,n=24",
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert list(report["objectives"]) == ["captioning", "bow-prediction", "bow-contrastive", "clip"]
    for res in report["objectives"].values():
        for curve in res["curves"].values():
            assert [x for x, _ in curve] == [0, 96, 192]
            assert all(a * 24 == pytest.approx(round(a * 24), abs=1e-6) for _, a in curve)  # counts of 24 images
    assert [r["paper_speedup"] for r in report["ratios"]["heldout"]] == [3.0, 4.0, None]
    assert report["findings"] and (out / "curves.png").stat().st_size > 0
    assert "| images seen |" in (out / "report.md").read_text()
    assert "report:" in capsys.readouterr().out
    assert main(["study", "efficiency", "--data", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "labelled images" in capsys.readouterr().err
    assert main(["study", "efficiency", "--objectives", "clip,mlm", "--out", str(tmp_path / "x")]) == 2
    assert "unknown objective" in capsys.readouterr().err
