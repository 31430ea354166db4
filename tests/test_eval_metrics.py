import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

import clipforge
from clipforge.eval import mean_per_class_recall, retrieval_metrics, topk_accuracy, zero_shot_classifier
from clipforge.eval.zeroshot import TEMPLATE_SETS, load_templates


def test_topk_hand_computed():
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = torch.tensor([1, 1, 0, 2])
    # row 0: top1 hit; row 1: label 1 ranked 2nd; row 2: label 0 ranked 3rd; row 3: label 2 ranked 3rd
    assert topk_accuracy(logits, labels, (1, 2, 3)) == {"top1": 0.25, "top2": 0.5, "top3": 1.0}


def test_topk_and_per_class_recall_match_sklearn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 10))
    labels = rng.integers(0, 10, 500)
    logits[np.arange(250), labels[:250]] += 2  # make it better than chance
    for k in (1, 3, 5):
        ours = topk_accuracy(torch.tensor(logits), torch.tensor(labels), (k,))[f"top{k}"]
        assert ours == pytest.approx(top_k_accuracy_score(labels, logits, k=k, labels=range(10)))
    preds = logits.argmax(1)
    assert mean_per_class_recall(torch.tensor(preds), torch.tensor(labels), 10) == pytest.approx(
        balanced_accuracy_score(labels, preds)
    )


def test_retrieval_hand_computed_with_several_captions_per_image():
    # 2 images; captions 0,1 describe image 0, caption 2 describes image 1
    sim = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.3, 0.7]])
    m = retrieval_metrics(sim, torch.tensor([0, 0, 1]), ks=(1, 2))
    # image 0: best own caption (0.9) ranked 1; image 1: own caption 0.7 is the best in its row -> 1
    assert m["image_to_text_R@1"] == 1.0
    # caption 0: column [0.9, 0.2] -> image 0 rank 1; caption 1: [0.1, 0.3] -> image 0 rank 2;
    # caption 2: [0.8, 0.7] -> image 1 rank 2
    assert m["text_to_image_R@1"] == pytest.approx(1 / 3) and m["text_to_image_R@2"] == 1.0
    assert m["text_to_image_median_rank"] == 2.0 and m["text_to_image_mean_rank"] == pytest.approx(5 / 3)
    assert m["image_to_text_mean_rank"] == 1.0


def test_retrieval_matches_brute_force():
    rng = np.random.default_rng(1)
    n_img, per = 30, 3
    owner = np.repeat(np.arange(n_img), per)
    sim = rng.normal(size=(n_img, n_img * per))
    sim[owner, np.arange(n_img * per)] += 1.5
    m = retrieval_metrics(torch.tensor(sim), torch.tensor(owner))
    i2t = [min(int((sim[i] > sim[i, j]).sum()) + 1 for j in np.flatnonzero(owner == i)) for i in range(n_img)]
    t2i = [int((sim[:, j] > sim[owner[j], j]).sum()) + 1 for j in range(n_img * per)]
    for k in (1, 5, 10):
        assert m[f"image_to_text_R@{k}"] == pytest.approx(np.mean(np.array(i2t) <= k))
        assert m[f"text_to_image_R@{k}"] == pytest.approx(np.mean(np.array(t2i) <= k))
    assert m["image_to_text_median_rank"] == pytest.approx(np.median(i2t))
    assert m["text_to_image_mean_rank"] == pytest.approx(np.mean(t2i))


def test_template_sets():
    assert len(TEMPLATE_SETS["openai80"]) == 80 and len(TEMPLATE_SETS["openai7"]) == 7
    assert TEMPLATE_SETS["openai7"][0] == "itap of a {}."
    assert TEMPLATE_SETS["bare"] == ["{}"]
    with pytest.raises(clipforge.ConfigError, match="exactly one"):
        load_templates(["a photo of a cat"])
    with pytest.raises(clipforge.ConfigError, match="unknown template set"):
        load_templates("openai81")


def test_templates_from_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a photo of a {}.\n\nan {} in the wild\n")
    assert load_templates(str(path)) == ["a photo of a {}.", "an {} in the wild"]


def test_zero_shot_classifier_is_the_normalised_template_average():
    model = clipforge.create_model("tiny-vit", seed=0).eval()
    templates = ["a photo of a {}.", "a drawing of a {}.", "{}"]
    clf = zero_shot_classifier(model, ["cat", "dog"], templates)
    with torch.no_grad():
        for i, name in enumerate(["cat", "dog"]):
            e = torch.nn.functional.normalize(
                model.encode_text(clipforge.tokenize([t.format(name) for t in templates])), dim=-1
            )
            expected = torch.nn.functional.normalize(e.mean(0), dim=-1)
            torch.testing.assert_close(clf.weights[i], expected, atol=1e-6, rtol=1e-5)
    # an image embedding pointing at a class's weight is classified as that class, with its probability
    top = clf.classify(torch.stack([clf.weights[1] * 3, clf.weights[0]]), k=2)
    assert top[0][0][0] == "dog" and top[1][0][0] == "cat"
    assert top[0][0][1] > top[0][1][1] and sum(p for _, p in top[0]) == pytest.approx(1.0, abs=1e-5)


def test_debiased_classifier_removes_the_nuisance_directions():
    from clipforge.eval.zeroshot import ZeroShotClassifier

    # embeddings = shape part (axes 0-2) + colour part (axes 3-4); the colour part is large
    shape_axes, colour_axes = torch.eye(6)[:3], torch.eye(6)[3:5]
    # class prompts absorbed a colour prior: shape i leans towards the colour it was seen with
    shapes = ZeroShotClassifier(
        ["a", "b", "c"], torch.nn.functional.normalize(shape_axes + 0.8 * colour_axes[[0, 1, 1]], dim=-1), 100.0
    )
    colours = ZeroShotClassifier(["red", "blue"], colour_axes + 0.1, 100.0)
    images = 0.5 * shape_axes[[0, 1, 2]] + 3.0 * colour_axes[[1, 0, 0]]  # shape i in an unusual colour
    assert (shapes.logits(images).argmax(1) == torch.arange(3)).sum() < 3  # the colour prior wins somewhere
    fixed = shapes.debiased(colours)
    assert fixed.logits(images).argmax(1).tolist() == [0, 1, 2]
    # the projection removes exactly the span of the colour prompts' differences, nothing else
    diff = colours.weights[0] - colours.weights[1]
    assert (diff @ fixed.projection).abs().max() < 1e-6
    assert torch.allclose(shape_axes @ fixed.projection, shape_axes, atol=1e-6)
    assert torch.allclose(fixed.weights.norm(dim=-1), torch.ones(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: features on the CPU, classifier on the GPU")
def test_classifier_built_on_the_gpu_scores_cpu_features():
    # image_features() returns CPU tensors while zero_shot_classifier() keeps the model's device: the
    # quickstart mixes the two (it failed on a GPU before the classifier followed the features' device)
    model = clipforge.create_model("tiny-vit", seed=0).eval().cuda()
    clf = zero_shot_classifier(model, ["cat", "dog"], ["a photo of a {}."])
    colours = zero_shot_classifier(model, ["red", "blue"], ["a photo of a {}."])
    feats = torch.stack([clf.weights[1].cpu() * 3, clf.weights[0].cpu()])
    assert clf.logits(feats).device.type == "cpu"
    assert clf.logits(feats).argmax(1).tolist() == [1, 0]
    assert clf.debiased(colours).logits(feats).device.type == "cpu"
