import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import clipforge
from clipforge.losses import clip_loss, siglip_loss

# image embeddings e1, e2, e3 and text embeddings e1, e2, e1 (all unit vectors); scale 2.
IMAGE = torch.eye(3)
TEXT = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0]])


def test_clip_loss_hand_computed_3x3():
    # logits = 2 * IMAGE @ TEXT.T = [[2,0,2],[0,2,0],[0,0,0]]
    e2 = math.exp(2)
    rows = [-2 + math.log(2 * e2 + 1), -2 + math.log(e2 + 2), math.log(3)]  # image -> text, labels 0,1,2
    cols = [-2 + math.log(e2 + 2), -2 + math.log(e2 + 2), math.log(e2 + 2)]  # text -> image
    expected = (sum(rows) / 3 + sum(cols) / 3) / 2
    assert clip_loss(IMAGE, TEXT, 2.0).item() == pytest.approx(expected, abs=1e-6)


def test_siglip_loss_hand_computed_3x3():
    # logits = 2 * sim - 1 = [[1,-1,1],[-1,1,-1],[-1,-1,-1]]; +1 on the diagonal, -1 elsewhere
    ls = lambda x: -math.log1p(math.exp(-x))  # noqa: E731  log sigmoid
    expected = -(7 * ls(1) + 2 * ls(-1)) / 3
    assert siglip_loss(IMAGE, TEXT, 2.0, -1.0).item() == pytest.approx(expected, abs=1e-6)


def test_perfect_alignment_gives_low_loss():
    x = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert clip_loss(x, x, 100.0).item() < clip_loss(x, x.roll(1, 0), 100.0).item()


# ------------------------------------------------------------------------- two-process equivalence
N, D, WORLD = 8, 16, 2


def _features(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=-1)
    return image, text


def _reference(kind: str):
    image, text = (t.clone().requires_grad_(True) for t in _features())
    scale = torch.tensor(10.0, requires_grad=True)
    loss = clip_loss(image, text, scale) if kind != "siglip" else siglip_loss(image, text, scale, -2.0)
    loss.backward()
    return loss.detach(), image.grad, text.grad, scale.grad


def _worker(rank: int, init_file: str, kind: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    image, text = _features()
    n = N // WORLD
    image = image[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    text = text[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    scale = torch.tensor(10.0, requires_grad=True)
    if kind == "siglip":
        loss = siglip_loss(image, text, scale, -2.0, gather=True)
    else:
        loss = clip_loss(image, text, scale, gather=True, local_loss=(kind == "local"))
    loss.backward()
    from clipforge.distributed import any_across_ranks, collective_device

    # the trainer's collective decisions (checkpoint now?): one rank's True reaches every rank
    flags = torch.tensor([any_across_ranks(rank == 1), any_across_ranks(False), collective_device().type == "cpu"])
    result = {"loss": loss.detach(), "image": image.grad, "text": text.grad, "scale": scale.grad, "flags": flags}
    torch.save(result, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["global", "local", "siglip"])
def test_two_process_gloo_matches_single_process(tmp_path, kind):
    out = str(tmp_path / "res")
    mp.spawn(_worker, args=(str(tmp_path / "init"), kind, out), nprocs=WORLD, join=True)
    res = [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]
    loss, g_image, g_text, g_scale = _reference(kind)
    # the mean of the per-rank losses is the loss of the global batch (identical on every rank when global)
    assert torch.stack([r["loss"] for r in res]).mean().item() == pytest.approx(loss.item(), abs=1e-5)
    if kind == "global":
        assert all(r["loss"].item() == pytest.approx(loss.item(), abs=1e-5) for r in res)
    # feature gradients arrive world_size x (DDP's averaging divides that out); the scale's gradient
    # is not gathered, so its mean over ranks (DDP's average) is the single-process gradient
    n = N // WORLD
    for r, got in enumerate(res):
        torch.testing.assert_close(got["image"] / WORLD, g_image[r * n : (r + 1) * n], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got["text"] / WORLD, g_text[r * n : (r + 1) * n], atol=1e-6, rtol=1e-5)
    assert all(r["flags"].tolist() == [True, False, True] for r in res)  # gloo's collectives take CPU tensors
    mean_scale_grad = torch.stack([r["scale"] for r in res]).mean()
    torch.testing.assert_close(mean_scale_grad, g_scale, atol=1e-6, rtol=1e-5)


def test_loss_is_exported():
    assert clipforge.clip_loss is clip_loss and clipforge.siglip_loss is siglip_loss


@pytest.mark.parametrize("n,chunk", [(37, 8), (64, 64), (100, 128)])
def test_chunked_loss_equals_plain_loss_and_gradients(n, chunk):
    from clipforge.losses import clip_loss_chunked

    g = torch.Generator().manual_seed(n)
    base_i = torch.nn.functional.normalize(torch.randn(n, 24, generator=g, dtype=torch.float64), dim=-1).float()
    base_t = torch.nn.functional.normalize(torch.randn(n, 24, generator=g, dtype=torch.float64), dim=-1).float()
    results = []
    for fn in (lambda a, b, s: clip_loss(a, b, s), lambda a, b, s: clip_loss_chunked(a, b, s, chunk=chunk)):
        img, txt = base_i.clone().requires_grad_(True), base_t.clone().requires_grad_(True)
        scale = torch.tensor(14.0, requires_grad=True)
        loss = fn(img, txt, scale)
        loss.backward()
        results.append((loss.detach(), img.grad, txt.grad, scale.grad))
    (l1, gi1, gt1, gs1), (l2, gi2, gt2, gs2) = results
    torch.testing.assert_close(l2, l1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gi2, gi1, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(gt2, gt1, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(gs2, gs1, atol=1e-6, rtol=1e-4)


def test_collectives_get_cuda_tensors_under_nccl(monkeypatch):
    # NCCL refuses CPU tensors: under it the trainer's any-rank flag is made on this rank's GPU (mocked here)
    import clipforge.distributed as D

    assert D.collective_device() == torch.device("cpu")  # not distributed
    monkeypatch.setattr(D, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert D.collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    assert D.collective_device() == torch.device("cpu")


def test_resume_restores_the_rng_of_only_the_gpus_there_are(monkeypatch):
    # a checkpoint saved on 4 GPUs resumed where 2 are visible: GPUs 0 and 1 get their states, no error
    import random

    from clipforge.train.checkpoint import set_rng_state

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state[0]), device)))
    gpus = [torch.full((4,), i, dtype=torch.uint8) for i in range(4)]
    set_rng_state({"torch": torch.get_rng_state(), "python": random.getstate(), "cuda": gpus})
    assert restored == [(0, 0), (1, 1)]
