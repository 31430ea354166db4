"""GroupViT: no masks on the training path, the Gumbel grouping's forward and backward, token counts per
stage, the multi-label loss by hand, zero-shot segmentation through `clipforge segment` and `eval`,
and the study's report."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clipforge
from clipforge.cli import main
from clipforge.data.synthetic import SyntheticWorld
from clipforge.errors import ConfigError
from clipforge.registry import get_system
from clipforge.systems.groupvit import GroupViT, GroupViTOptions, GroupViTTask
from clipforge.systems.groupvit.model import GroupingBlock
from clipforge.systems.groupvit.task import caption_phrases, caption_prompts, load_nouns
from clipforge.train.prepare import build_model, prepare_run


def _model(preset="groupvit-shapes") -> GroupViT:
    return build_model(get_system("groupvit"), get_system("groupvit").preset(preset), seed=0)


def test_the_training_data_path_yields_no_masks():
    run = prepare_run("groupvit", data="synthetic:n=16")
    items = [run.dataset[i] for i in range(8)]
    assert all(set(it) == {"image", "caption", "skipped"} for it in items)
    batch = run.task.collate(items)
    assert set(batch) == {"images", "tokens", "captions", "skipped", "prompts"}
    outputs = run.task.forward(run.model, batch)
    assert not any("mask" in k for k in (*batch, *outputs))


def test_gumbel_assignment_is_one_hot_forward_and_passes_gradients_backward():
    block = GroupingBlock(32, 2, 4, 4, 4.0, tau=1.0).train()
    logits = torch.randn(2, 4, 10, requires_grad=True)
    hard = block.assign(logits)
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(hard.detach().sum(dim=1), torch.ones(2, 10))  # each token in exactly one group
    (hard * torch.randn_like(hard)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # straight-through: the soft path's gradient
    block.eval()
    logits = torch.randn(2, 4, 10, requires_grad=True)
    hard = block.assign(logits)
    assert torch.equal(hard.detach().argmax(dim=1), logits.argmax(dim=1))  # no noise at inference
    (hard * torch.randn_like(hard)).sum().backward()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("preset, tokens", [("groupvit-shapes", (64, 16, 8)), ("groupvit-s", (196, 64, 8))])
def test_token_counts_shrink_as_configured(preset, tokens):
    model = _model(preset).eval()
    size = model.image_size
    with torch.no_grad():
        out = model.image_groups(torch.randn(2, 3, size, size))
    assert [tuple(s.shape) for s in out.soft] == [(2, tokens[1], tokens[0]), (2, tokens[2], tokens[1])]
    assert out.segments.shape == (2, tokens[2], model.config.embed_dim)
    for soft in out.soft:
        torch.testing.assert_close(soft.sum(dim=1), torch.ones(soft.shape[0], soft.shape[2]))
    maps = model.pixel_groups(out.soft, (size, size))
    assert maps.shape == (2, tokens[2], size, size)
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(2, size, size))


def test_no_blocks_after_the_last_grouping_stage_leaves_each_segment_its_own():
    from dataclasses import replace

    model = GroupViT.from_config(replace(_model().config, depths=(2, 2, 0))).eval()
    assert len(model.final_blocks.resblocks) == 0
    with torch.no_grad():
        out = model.image_groups(torch.randn(2, 3, 64, 64))
    assert out.segments.shape == (2, 8, model.config.embed_dim) and torch.isfinite(out.segments).all()
    torch.testing.assert_close(out.pooled, out.segments.mean(dim=1))  # no mixing: the pooled is their mean


def test_local_readout_reads_each_segment_from_its_own_patches_only():
    from dataclasses import replace

    from clipforge.errors import ConfigError

    with pytest.raises(ConfigError, match="segment_readout"):
        replace(_model().config, segment_readout="pooled")
    model = GroupViT.from_config(replace(_model().config, segment_readout="local")).eval()
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(1, 64, 128, generator=g)
    first = F.one_hot(torch.randint(0, 16, (1, 64), generator=g), 16).transpose(1, 2).float()  # 64 -> 16
    second = F.one_hot(torch.arange(16)[None] % 4, 8).transpose(1, 2).float()  # 16 -> 8 (groups 4-7 empty)
    with torch.no_grad():
        before = model.local_segments(patches, [first, second])
        final = (second @ first)[0].argmax(dim=0)  # each patch's final group
        changed = patches.clone()
        changed[0, final != 2] += 5 * torch.randn(int((final != 2).sum()), 128, generator=g)
        after = model.local_segments(changed, [first, second])
    assert before.shape == (1, 8, model.config.embed_dim)
    torch.testing.assert_close(after[0, 2], before[0, 2])  # group 2's patches untouched: its embedding too
    assert not torch.allclose(after[0, 0], before[0, 0])
    torch.testing.assert_close(after[0, 5], model.local_projection.bias)  # an empty group: the bias
    with torch.no_grad():
        out = model.image_groups(torch.randn(2, 3, 64, 64))
    assert out.segments.shape == (2, 8, model.config.embed_dim)


def test_caption_prompts_use_the_nouns_and_pad_with_the_caption(tmp_path):
    nouns = load_nouns("")
    assert caption_prompts("a red circle and a blue star", nouns, 3, "a photo of a {}.") == [
        "a photo of a circle.",
        "a photo of a star.",
        "a red circle and a blue star",
    ]
    three = caption_prompts("a circle, a star, a cross and a square", nouns, 2, "{}")
    assert len(three) == 2 and set(three) <= {"circle", "star", "cross", "square"} and len(set(three)) == 2
    (tmp_path / "nouns.txt").write_text("dog\ncat\n")
    assert caption_prompts("A Dog!", load_nouns(str(tmp_path / "nouns.txt")), 1, "{}") == ["dog"]


def test_caption_phrases_keep_the_words_before_each_noun():
    nouns = load_nouns("")
    assert caption_phrases("a pink hexagon, a blue pentagon and a pink diamond", nouns) == [
        "pink hexagon",
        "blue pentagon",
        "pink diamond",
    ]
    assert caption_phrases("a small orange hexagon to the left of a star", nouns) == ["small orange hexagon", "star"]
    assert caption_phrases("a very small orange hexagon", nouns, modifiers=1) == ["orange hexagon"]
    # two objects that share a noun stay apart; a repeated phrase is kept once
    assert caption_phrases("a red circle, a blue circle and a red circle", nouns) == ["red circle", "blue circle"]
    assert caption_phrases("three shapes: a star", nouns) == ["star"]
    assert caption_phrases("no shapes here", nouns) == []


@pytest.mark.parametrize("how", ["phrases", "both"])
def test_segment_prompts_from_phrases(how):
    run = prepare_run("groupvit", data="synthetic:n=16", settings={"segment_loss_weight": 1.0, "segment_prompts": how})
    items = [run.dataset[i] for i in range(8)]
    batch = run.task.collate(items)
    nouns = load_nouns("")
    words = [caption_phrases(c, nouns) for c in batch["captions"]]
    if how == "both":  # the phrases, then the bare nouns not already among them
        words = [ws + [w for w in re.findall(r"[a-z]+", c.lower()) if w in nouns and w not in ws]
                 for ws, c in zip(words, batch["captions"])]  # fmt: skip
        words = [list(dict.fromkeys(ws)) for ws in words]
    vocab = sorted({p for ps in words for p in ps})
    assert any(" " in p for p in vocab)  # some phrase carries its colour or size
    assert batch["nouns"].shape[0] == len(vocab)
    assert batch["noun_presence"].tolist() == [[p in ps for p in vocab] for ps in words]
    caption = "a red circle, a star and a blue circle"
    expected = {
        "phrases": ["red circle", "star", "blue circle"],
        "both": ["red circle", "star", "blue circle", "circle"],
    }
    assert run.task._segment_words(caption) == expected[how]
    with pytest.raises(ConfigError, match="segment_prompts"):
        GroupViTOptions(segment_prompts="adjectives")


def test_multi_label_loss_by_hand():
    task = GroupViTTask(_model(), GroupViTOptions(multi_label=2))
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    prompts = F.normalize(torch.randn(3, 2, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    out = {"image": image, "text": text, "prompts": prompts, "scale": torch.tensor(10.0), "ml_scale": torch.tensor(5.0)}
    loss = task.loss(out)["multi_label"]
    logits = 5.0 * image @ prompts.reshape(6, 8).T  # (3 images, 6 prompts)
    image_side = -np.mean([np.log(logits[i].softmax(0)[2 * i : 2 * i + 2].numpy()).sum() / 2 for i in range(3)])
    prompt_side = np.mean([-np.log(logits[:, j].softmax(0)[j // 2].item()) for j in range(6)])
    assert loss.item() == pytest.approx(0.5 * (image_side + prompt_side), rel=1e-5)


def test_segment_loss_by_hand():
    from clipforge.systems.groupvit.task import segment_losses

    g = torch.Generator().manual_seed(1)
    segments = F.normalize(torch.randn(2, 3, 8, generator=g), dim=-1)  # 2 images, 3 segments
    nouns = F.normalize(torch.randn(2, 8, generator=g), dim=-1)  # 2 nouns
    present = torch.tensor([[True, False], [True, True]])  # image 0 names noun 0; image 1 both
    background = F.normalize(torch.randn(8, generator=g), dim=-1)
    out = {"segments": segments, "nouns": nouns, "noun_presence": present, "ml_scale": torch.tensor(4.0)}
    losses = segment_losses({**out, "background": background}, 0.5)
    sims = torch.einsum("bge,ue->bgu", segments, nouns)
    best = sims.argmax(dim=1)  # (B, U) each image's most similar segment per noun
    flat = (4.0 * sims.reshape(6, 2)).log_softmax(dim=0)  # each noun over all 6 segments
    terms = [flat[b * 3 + int(best[b, u]), u] for b, u in ((0, 0), (1, 0), (1, 1))]
    assert losses["segment_nouns"].item() == pytest.approx(-0.5 * float(sum(terms)) / 3, rel=1e-5)
    classes = torch.cat([nouns, background[None]])
    expected = []
    for b in range(2):
        for s_ in range(3):
            named = [u for u in range(2) if present[b, u] and int(best[b, u]) == s_]
            target = max(named) if named else 2  # a noun's positive: that noun (the later of two); else background
            expected.append(-(4.0 * segments[b, s_] @ classes.T).log_softmax(0)[target].item())
    assert losses["segment_background"].item() == pytest.approx(0.5 * np.mean(expected), rel=1e-5)
    assert set(segment_losses(out, 1.0)) == {"segment_nouns"}  # no background embedding: the noun side only
    # a caption naming no noun: its segments are neither positives nor background targets
    none = segment_losses({**out, "background": background, "noun_presence": torch.zeros(2, 2, dtype=torch.bool)}, 1)
    assert none["segment_nouns"].item() == 0 and "segment_background" not in none


def test_the_segment_loss_weighs_nothing_before_segment_start_yet_reaches_every_parameter():
    """Before `segment_start` the segment loss weighs 0 but is still computed, so the learned background gets a
    (zero) gradient on every step, as DistributedDataParallel requires; from that step on it counts."""
    run = prepare_run("groupvit", recipe="shapes", data="synthetic:n=16", settings={"segment_start": 3})
    model, task = run.model, run.task
    task.configure(model)
    task.train_mode(model)
    batch = task.collate([run.dataset[i] for i in range(8)])
    for step, counts in ((2, False), (3, True)):
        model.zero_grad()
        task.step = step
        torch.manual_seed(0)
        losses = task.loss(task.forward(model, batch))
        sum(losses.values()).backward()
        grad = model.background_embedding.grad
        assert grad is not None and bool(grad.abs().sum() > 0) == counts
        assert (losses["segment_nouns"].item() > 0) == counts and (losses["segment_background"].item() > 0) == counts


def test_the_balance_term_counts_collapse():
    from clipforge.systems.groupvit.task import group_balance

    spread = torch.full((2, 4, 6), 0.25)
    collapsed = F.one_hot(torch.zeros(2, 6, dtype=torch.long), 4).transpose(1, 2).float()
    assert group_balance((spread,)).item() == pytest.approx(0.0, abs=1e-6)
    assert group_balance((collapsed,)).item() == pytest.approx(np.log(4), rel=1e-5)
    assert group_balance((spread, collapsed)).item() == pytest.approx(np.log(4) / 2, rel=1e-5)


def test_colour_affinity_pulls_like_patches_together_and_unlike_ones_apart():
    from types import SimpleNamespace

    from clipforge.config import PreprocessConfig
    from clipforge.systems.groupvit.task import affinity_loss, patch_affinity

    pre = PreprocessConfig()
    raw = torch.zeros(1, 3, 32, 32)
    raw[:, 0, :, 16:] = 1.0  # the right half red, the left black: a 4 x 4 grid of 8-px patches
    images = (raw - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    a = patch_affinity(images, SimpleNamespace(preprocess=pre, patch_size=8), sigma=0.1)
    assert a.shape == (1, 4, 4, 4)
    assert a[0, 0, :, 1].max() < 1e-6 and a[0, 0, :, 0].min() > 0.999  # right neighbour across / within a half
    assert a[0, 1, :3].min() > 0.999  # the lower neighbour always shares the colour
    half = (torch.arange(16) % 4 >= 2).long()  # each patch's half, row-major
    by_colour = F.one_hot(half, 2).T[None].float()  # (1, 2, 16): one final group per half
    together = F.one_hot(torch.zeros(16, dtype=torch.long), 2).T[None].float()
    assert affinity_loss((by_colour,), a).item() == pytest.approx(0.0, abs=1e-5)
    assert affinity_loss((together,), a).item() > 0.1  # every pair across the halves costs its full share
    # two stages compose; the gradient reaches the logits through the straight-through assignment
    logits = torch.randn(1, 4, 16, requires_grad=True)
    first = GroupingBlock(8, 1, 4, 4, 1.0, 1.0).train().assign(logits)
    second = F.one_hot(torch.tensor([0, 0, 1, 1]), 2).T[None].float()  # 4 groups -> 2
    loss = affinity_loss((first, second), a)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    # noise-free assignments: gradient descent on the logits through them brings the term down
    block = GroupingBlock(8, 1, 4, 4, 1.0, 1.0).eval()
    logits = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(0)).requires_grad_()
    start = affinity_loss((block.assign(logits), second), a).item()
    for _ in range(20):
        (grad,) = torch.autograd.grad(affinity_loss((block.assign(logits), second), a), logits)
        with torch.no_grad():
            logits -= 50 * grad
    assert affinity_loss((block.assign(logits), second), a).item() < 0.5 * start


def test_segment_loss_trains_through_the_task_and_the_learned_background_decides():
    from clipforge.systems.groupvit.infer import class_embeddings, group_labels

    run = prepare_run(
        "groupvit",
        data="synthetic:n=16",
        settings={"segment_loss_weight": 1.0, "learned_background": True, "group_balance_weight": 0.5,
                  "affinity_weight": 0.5},
    )  # fmt: skip
    model, task = run.model, run.task
    task.configure(model)
    batch = task.collate([run.dataset[i] for i in range(8)])
    words = [[w for w in ("circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross")
              if w in c.lower()] for c in batch["captions"]]  # fmt: skip
    assert batch["nouns"].shape[0] == len({w for ws in words for w in ws}) and batch["noun_presence"].shape[0] == 8
    losses = task.loss(task.forward(model.train(), batch))
    assert {"segment_nouns", "segment_background", "group_balance", "affinity"} <= set(losses)
    assert 0 < losses["affinity"].item() < 0.5  # weight 0.5 x an expected disagreement in [0, 1]
    sum(losses.values()).backward()
    assert model.background_embedding.grad is not None and model.background_embedding.grad.abs().sum() > 0
    # inference: a segment whose nearest embedding is the learned background is background at any threshold
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    embeds = class_embeddings(model, ["circle", "square"])
    with torch.no_grad():
        segs = F.normalize(model.image_groups(images).segments.float(), dim=-1)
        for sign in (1, -1):  # the background near the segments' mean direction, then opposite it
            model.background_embedding.copy_(sign * segs.mean((0, 1)))
            r = group_labels(model, images, embeds, 0.0)
            bg = F.normalize(model.background_embedding.float(), dim=-1)
            closest_bg = (segs @ bg) > (segs @ embeds.T).max(dim=-1).values  # (B, G)
            assert closest_bg.any() if sign == 1 else not closest_bg.all()
            for i in range(2):
                for grp in r.groups[i].unique():
                    assert bool((r.labels[i][r.groups[i] == grp] == 0).all()) == bool(closest_bg[i, grp])


def test_hard_maps_give_each_patch_its_hard_groups_composition():
    from dataclasses import replace

    from clipforge.errors import ConfigError
    from clipforge.systems.groupvit.infer import class_embeddings, group_labels

    with pytest.raises(ConfigError, match="maps"):
        replace(_model().config, maps="argmax")
    model = _model().eval()
    assert model.config.maps == "hard"  # the shapes preset's
    images = torch.randn(2, 3, 64, 64)
    r = group_labels(model, images, class_embeddings(model, ["circle", "star"]), 0.5)
    with torch.no_grad():
        out = model.image_groups(images)
    first, second = out.hard[0].argmax(dim=1), out.hard[1].argmax(dim=1)  # (B, 64) -> 16, (B, 16) -> 8
    composed = second.gather(1, first).view(2, 8, 8)  # each 8-px patch's final group
    assert torch.equal(r.groups[:, 4::8, 4::8], composed)  # patch centres


def test_a_learned_background_or_local_readout_without_the_segment_loss_is_refused():
    from clipforge.errors import ConfigError

    for settings in ({"learned_background": True}, {"segment_readout": "local"}):
        run = prepare_run("groupvit", data="synthetic:n=8", settings=settings)
        with pytest.raises(ConfigError, match="segment_loss_weight"):
            run.task.configure(run.model)
        run = prepare_run("groupvit", data="synthetic:n=8", settings={**settings, "segment_loss_weight": 0.5})
        run.task.configure(run.model)  # trained by the segment loss: accepted


def test_accumulation_refuses_the_segment_loss_and_runs_the_other_terms(tmp_path, capsys):
    """Gradient caching splits the outputs by rows: the segment loss scores segments against the whole batch's
    nouns, so --accum-steps is refused with a message that names it, before anything is written; the paper's
    losses, the balance and the affinity term (per image) run."""
    args = ["train", "groupvit", "--data", "synthetic:n=32", "--steps", "1", "--batch-size", "8", "--workers", "0"]
    args += ["--accum-steps", "2", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "seg"), "--set", "segment_loss_weight=1"]) == 2
    assert "segment_loss_weight" in capsys.readouterr().err
    assert not (tmp_path / "seg").exists()
    sets = ["--set", "group_balance_weight=1", "--set", "affinity_weight=1"]
    assert main([*args, "--out", str(tmp_path / "rest"), *sets]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 1


def test_accumulated_gradients_are_those_of_the_cached_loss_despite_the_gumbel_noise():
    """Each micro-batch's re-run draws the same Gumbel noise as its first pass, so the accumulated gradient is
    the gradient of the loss the first pass computed (here rebuilt by hand with one graph over both halves)."""
    from clipforge.train import TrainConfig
    from clipforge.train.step import Stepper, _split

    run = prepare_run("groupvit", data="synthetic:n=16", settings={"group_balance_weight": 1, "affinity_weight": 1})
    model, task = run.model, run.task
    task.configure(model)
    task.train_mode(model)
    batch = task.collate([run.dataset[i] for i in range(8)])
    cfg = TrainConfig(out="unused", steps=1, batch_size=8, accum_steps=2, precision="fp32")
    torch.manual_seed(3)
    cached = Stepper(task, model, cfg, torch.device("cpu"))(batch)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch.manual_seed(3)
    outs = [task.forward(model, c) for c in _split(batch, 2)]
    joined = {k: torch.cat([o[k] for o in outs]) if outs[0][k].ndim else outs[0][k] for k in outs[0]}
    losses = task.loss(joined)
    sum(losses.values()).backward()
    assert {"group_balance", "affinity"} <= losses.keys()
    assert all(torch.isclose(cached[k], losses[k].detach(), atol=1e-6) for k in losses)
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and "stages.0.grouping.assign_q.weight" in got
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_from_clip_takes_the_text_tower_and_locks_it():
    clip = clipforge.load("shapes")
    run = prepare_run("groupvit", data="synthetic:n=8")
    model = run.model
    ref = clip.text.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.text.state_dict().items())
    run.task.configure(model)
    assert not any(p.requires_grad for p in model.text.parameters())
    assert model.multi_label_logit_scale.requires_grad and model.positional_embedding.requires_grad


def test_train_segment_and_eval_through_the_command(tmp_path, capsys):
    args = ["train", "groupvit", "--data", "synthetic:n=64", "--steps", "3", "--batch-size", "8", "--workers", "0"]
    assert main([*args, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = clipforge.load(summary["model"])
    assert isinstance(model, GroupViT)
    # the training checkpoint names its system and config too: it loads as the same GroupViT
    resumed = clipforge.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert isinstance(resumed, GroupViT) and resumed.config == model.config
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in resumed.state_dict().items())
    image = tmp_path / "scene.png"
    SyntheticWorld(1, 64, "val")[0].image.resize((80, 48)).save(image)
    out = tmp_path / "seg"
    labels = "background,circle,square,star"
    assert main(["segment", str(image), "--model", summary["model"], "--labels", labels, "--out", str(out)]) == 0
    entry = json.loads((out / "areas.json").read_text())["images"][str(image)]
    assert sum(a["pixels"] for a in entry["areas"].values()) == 80 * 48
    assert Image.open(entry["mask"]).size == (80, 48)
    assert main(["segment", str(image), "--model", summary["model"], "--labels", "background"]) == 2
    capsys.readouterr()
    res = tmp_path / "eval.json"
    args = ["eval", "--model", summary["model"], "--task", "segmentation", "--data", "synthetic:n=8", "--out", str(res)]
    assert main([*args, "--threshold", "0.5"]) == 0
    metrics = json.loads(res.read_text())["metrics"]
    assert metrics["threshold"] == 0.5 and len(metrics["per_class_iou"]) == 9 and 0 <= metrics["miou"] <= 1


def test_threshold_decides_background_but_never_every_group():
    from dataclasses import replace

    from clipforge.systems.groupvit.infer import class_embeddings, group_labels

    model = GroupViT.from_config(replace(_model().config, learned_background=False)).eval()  # the threshold alone
    images = torch.randn(3, 3, 64, 64)
    embeds = class_embeddings(model, ["circle", "square"])
    none = group_labels(model, images, embeds, 0.0)
    assert (none.labels > 0).all()  # nothing is under a threshold of 0
    every = group_labels(model, images, embeds, 1.0)
    best = every.group_probs.max(dim=-1).values  # (B, G)
    for i in range(3):  # only each image's most confident group(s) stay foreground (if they own pixels)
        kept = {int(g) for g in every.groups[i][every.labels[i] > 0].unique()}
        assert all(best[i, g] == best[i].max() for g in kept)
        owned = {int(g) for g in every.groups[i].unique()}
        assert kept == {g for g in owned if best[i, g] == best[i].max()}


def test_study_writes_the_family_report(tmp_path):
    from clipforge.systems.groupvit.study import StudySettings, run_study

    report = run_study(tmp_path, StudySettings(steps=2, batch_size=8, test_images=16, progress=False))
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["system"] == "groupvit" and on_disk["seconds"] > 0
    assert {"miou", "oracle_miou"} <= set(on_disk["metrics"])
    assert {"all_background_miou", "image_label_miou"} <= set(on_disk["baselines"])
    assert on_disk["metrics"]["oracle_miou"] >= on_disk["baselines"]["all_background_miou"]  # groups can only help
    assert all({"claim", "paper", "measured", "reproduced"} <= set(c) for c in report["claims"])
    assert (tmp_path / "groupvit_groups.png").stat().st_size > 0
