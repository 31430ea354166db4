"""`--compile`: the towers under torch.compile train to the same losses as eager."""

from __future__ import annotations

import json
import shutil

import pytest

from clipforge.train.loop import train
from clipforge.train.prepare import prepare_run


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C compiler")
def test_compiled_training_matches_eager_over_20_steps(tmp_path):
    import copy

    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    losses, models = {}, {}
    for compiled in (False, True):
        out = tmp_path / ("compiled" if compiled else "eager")
        run = prepare_run(
            "clip",
            model="tiny-vit",
            data="synthetic:n=640",
            settings={"text.layers": 1, "vision.layers": 2},
            train={"out": str(out), "steps": 20, "batch_size": 32, "accum_steps": 2, "precision": "fp32",
                   "log_every": 1, "progress": False, "workers": 0, "compile": compiled, "lr": 1e-3},
        )  # fmt: skip
        train(run.task, run.dataset, run.config)
        models[compiled] = run.model
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses[compiled] = [x["loss"] for x in lines if "loss" in x]
    assert len(losses[True]) == len(losses[False]) == 20
    for eager, compiled in zip(losses[False], losses[True]):
        assert compiled == pytest.approx(eager, rel=2e-3, abs=1e-4)
    assert losses[True][-1] < losses[True][0]  # and it trains
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # dynamo did compile graphs
    # after training the model is a plain module again: it deep-copies into an independent model
    model = models[True]
    assert "forward" not in model.visual.__dict__ and "forward" not in model.text.__dict__
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.visual.conv1.weight.zero_()
    x = torch.randn(2, 3, 64, 64)
    assert not torch.equal(model.encode_image(x), twin.encode_image(x))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C compiler")
def test_compiled_embedding_matches_eager_and_pads_the_last_batch(tmp_path):
    import numpy as np
    import torch._dynamo

    import clipforge
    from clipforge.embed import embed_images

    torch._dynamo.reset()
    model = clipforge.create_model("tiny-vit", seed=0).eval()
    rows = {}
    for compiled in (False, True):
        out = tmp_path / str(compiled)
        r = embed_images(model, "synthetic:n=10", out, batch_size=4, precision="fp32", workers=0, progress=False,
                         compile=compiled)  # fmt: skip
        assert r.embedded == 10  # 4 + 4 + a last batch of 2, padded to 4 for the compiled graph
        rows[compiled] = np.load(out / "img_emb" / "img_emb_0.npy").astype(np.float32)
    assert rows[True].shape == (10, model.config.embed_dim)
    np.testing.assert_allclose(rows[True], rows[False], atol=2e-3)
    assert model.visual.forward.__func__ is type(model.visual).forward  # the caller's model is not compiled
