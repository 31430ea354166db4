"""The optimiser's parameter groups and the learning-rate schedule, against hand-computed values."""

import math

import pytest
import torch
from torch import nn

import clipforge
from clipforge.train.optim import build_optimizer, cosine_schedule, no_decay


def test_no_decay_groups_by_name_and_shape():
    model = clipforge.create_model("tiny-vit", seed=0)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    decay, plain = opt.param_groups
    assert decay["weight_decay"] == 0.2 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in plain["params"]}
    # hand-picked members of each group: matrices decay; gains, biases, embeddings and the temperature do not
    assert {
        "visual.conv1.weight",
        "text.transformer.resblocks.0.attn.in_proj_weight",
        "text.text_projection",
        "visual.proj",
    } <= decayed
    assert {
        "logit_scale",
        "text.token_embedding.weight",
        "text.positional_embedding",
        "visual.class_embedding",
        "visual.positional_embedding",
        "text.ln_final.weight",
        "text.ln_final.bias",
        "text.transformer.resblocks.0.attn.in_proj_bias",
    } <= undecayed
    assert decayed.isdisjoint(undecayed) and len(decayed) + len(undecayed) == len(list(model.parameters()))


def test_no_decay_rule():
    assert no_decay("x.bias", torch.zeros(3)) and no_decay("x.ln.weight", torch.zeros(3))
    assert no_decay("token_embedding.weight", torch.zeros(3, 3)) and no_decay("logit_scale", torch.zeros(()))
    assert not no_decay("mlp.c_fc.weight", torch.zeros(3, 3))


def test_frozen_parameters_are_left_out():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model, lr=1.0, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6)
    assert sum(len(g["params"]) for g in opt.param_groups) == 3


@pytest.mark.parametrize(
    "step, factor",
    [
        (0, 1 / 4),  # linear warm-up: (step + 1) / warmup
        (1, 2 / 4),
        (3, 4 / 4),
        (4, 1.0),  # cosine from the peak: 0.5 (1 + cos(pi * (step - warmup) / (total - warmup)))
        (8, 0.5 * (1 + math.cos(math.pi * 4 / 8))),  # = 0.5, half-way
        (10, 0.5 * (1 + math.cos(math.pi * 6 / 8))),
        (12, 0.0),  # zero at the end
        (20, 0.0),  # and stays there
    ],
)
def test_warmup_then_cosine(step, factor):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.4)
    sched = cosine_schedule(opt, warmup=4, total=12)
    for _ in range(step):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4 * factor, abs=1e-12)


def test_sgd_takes_lr_times_gradient_steps():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = build_optimizer(nn.ParameterList([p]), lr=0.5, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6, kind="sgd")
    p.grad = torch.tensor([0.2, 0.4])
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([0.9, -2.2]))
