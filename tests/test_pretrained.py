"""Pretrained weights by name, without any network: a Hugging Face Hub cache the tests build, a URL
served from 127.0.0.1 with its SHA-256 checked, and `shapes`, shipped with the package."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import threading
import warnings

import pytest
import torch

import clipforge
from clipforge.cli import main
from clipforge.errors import CheckpointError
from clipforge.registry import Pretrained, get_system, register_system

TINY = dict(vision={"image_size": 32, "layers": 1}, text={"layers": 1})


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


def _hub_repo(hf_home, repo_id, files: dict[str, bytes], commit="0123456789abcdef0123456789abcdef01234567"):
    """A repository in the Hub cache layout huggingface_hub reads offline: refs/main and a snapshot."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)  # no trailing newline, as huggingface_hub writes it
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cf-cache"))
    return tmp_path / "hf"


def test_hf_hub_openclip_repository_from_the_offline_cache(offline_hub, tmp_path):
    model = clipforge.create_model("tiny-vit", seed=0, **TINY)
    clipforge.save(model, tmp_path / "oc.safetensors", format="openai")
    v, t = model.config.vision, model.config.text
    open_clip_config = {
        "model_cfg": {
            "embed_dim": model.config.embed_dim,
            "vision_cfg": {
                "image_size": v.image_size,
                "layers": v.layers,
                "width": v.width,
                "patch_size": v.patch_size,
                "head_width": v.head_width,
            },
            "text_cfg": {
                "context_length": 77,
                "vocab_size": 49408,
                "width": t.width,
                "heads": t.heads,
                "layers": t.layers,
            },
        },  # no quick_gelu: OpenCLIP's default, GELU, which the tiny preset uses too
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear"},
    }
    _hub_repo(
        offline_hub,
        "test-org/tiny-openclip",
        {
            "open_clip_config.json": json.dumps(open_clip_config).encode(),
            "open_clip_model.safetensors": (tmp_path / "oc.safetensors").read_bytes(),
            "model.safetensors": b"a timm-format file that must not be picked",
        },
    )
    loaded = clipforge.load("hf-hub:test-org/tiny-openclip")
    assert _same_weights(loaded, model)
    assert loaded.config.vision.act == "gelu" and loaded.config.preprocess.mean == (0.5, 0.5, 0.5)
    assert clipforge.preprocess(loaded).interpolation == "bilinear"
    with pytest.raises(CheckpointError, match="downloads are off"):
        clipforge.load("hf-hub:test-org/not-cached")


def test_hf_hub_transformers_repository_from_the_offline_cache(offline_hub, tmp_path):
    model = clipforge.create_model("tiny-vit", seed=1, **TINY)
    clipforge.save(model, tmp_path / "hf", format="hf")
    _hub_repo(offline_hub, "test-org/tiny-hf", {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()})
    loaded = clipforge.load("hf-hub:test-org/tiny-hf")
    assert _same_weights(loaded, model) and loaded.config == model.config


class _Server:
    """Serves `files` (path -> bytes) on 127.0.0.1 and counts requests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        outer = self
        self.files, self.requests = files, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests += 1
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def served_weights(tmp_path, monkeypatch):
    """An OpenAI-layout checkpoint served over HTTP and registered under a test name, as OpenAI's are."""
    from clipforge.hub import download

    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("CLIPFORGE_OFFLINE", raising=False)
    model = clipforge.create_model("tiny-vit", seed=2, **TINY)
    clipforge.save(model, tmp_path / "w.pt", format="openai")
    data = (tmp_path / "w.pt").read_bytes()
    server = _Server({"/good/w.pt": data, "/bad/w.pt": data[:-10] + b"0123456789"})
    sha = hashlib.sha256(data).hexdigest()
    system = get_system("clip")
    entries = {
        tag: Pretrained(
            f"test-tiny-{tag}",
            tag,
            "served",
            lambda tag=tag: download(f"{server.url}/{tag}/w.pt", sha, f"w-{tag}.pt", subdir="test"),
            load_options={"model": model.config, "act": "gelu"},
        )
        for tag in ("good", "bad")
    }
    register_system(dataclasses.replace(system, pretrained=(*system.pretrained, *entries.values())), replace=True)
    yield model, server, tmp_path / "cache" / "test"
    register_system(system, replace=True)
    server.close()


def test_url_download_is_checked_cached_and_refused_on_mismatch(served_weights, monkeypatch):
    model, server, cache = served_weights
    loaded = clipforge.load("test-tiny-good")
    assert _same_weights(loaded, model) and server.requests == 1
    assert sorted(p.name for p in cache.iterdir()) == ["w-good.pt", "w-good.pt.sha256"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # cached: no request, even offline
    assert _same_weights(clipforge.load("test-tiny-good"), model) and server.requests == 1
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(CheckpointError, match="is not the published"):
        clipforge.load("test-tiny-bad")
    assert sorted(p.name for p in cache.iterdir()) == ["w-good.pt", "w-good.pt.sha256"]  # nothing half-written
    monkeypatch.setenv("CLIPFORGE_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="downloads are off"):
        clipforge.load("test-tiny-bad")


def test_shapes_is_shipped_and_resolves_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "empty"))
    model = clipforge.load("shapes")
    assert model.config.vision.kind == "resnet" and model.config.text.layers == 1
    assert not (tmp_path / "empty").exists()  # nothing was downloaded or built
    # it is a trained model: zero-shot shape on held-out colour-shape pairs far above chance (1/8)
    from clipforge.eval.run import run_eval

    result = run_eval(model, "zeroshot", "synthetic:label=shape,split=heldout,n=200", templates="synthetic")
    assert result["metrics"]["top1"] > 0.8


def test_names_and_tags(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _same_weights(clipforge.create_model("shapes", pretrained="shapes"), clipforge.load("shapes"))
    with pytest.raises(CheckpointError, match="tags: openai"):
        clipforge.create_model("ViT-B-32", pretrained="laion2b")
    with pytest.raises(CheckpointError, match="architecture without trained weights"):
        clipforge.load("tiny-vit")
    assert main(["zeroshot", "x.png", "--model", "tiny-vit", "--labels", "a,b"]) == 2  # never random weights
    assert "without trained weights" in capsys.readouterr().err
    assert main(["models", "--pretrained"]) == 0
    out = capsys.readouterr().out
    assert "shapes" in out and "ViT-B-32" in out and "ViT-B/32" in out and "openai" in out


def test_ambiguous_name_for_a_bare_state_dict_warns(tmp_path):
    model = clipforge.create_model("tiny-vit", seed=0, **TINY)
    clipforge.save(model, tmp_path / "sd.pt", format="openai")
    with pytest.warns(UserWarning, match="ViT-B-16-gelu"):
        with pytest.raises(CheckpointError):  # the tiny weights do not fit ViT-B-16; the warning comes first
            clipforge.load(tmp_path / "sd.pt", model="ViT-B-16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError):
            clipforge.load(tmp_path / "sd.pt", model="ViT-B-16-gelu")


def test_openai_names_and_their_aliases_resolve_to_one_entry(monkeypatch, tmp_path):
    from clipforge.registry import find_pretrained
    from clipforge.systems.clip.pretrained import OPENAI

    for alias, name in [("ViT-B/32", "ViT-B-32"), ("ViT-L/14@336px", "ViT-L-14-336"), ("RN50-quickgelu", "RN50")]:
        entry = find_pretrained(alias)
        assert entry is not None and entry.name == name and entry.tag == "openai"
    assert len(OPENAI) == 9
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"ViT-B-32\.pt is not in the cache .* downloads are off"):
        clipforge.load("ViT-B/32")
    assert clipforge.create_model("ViT-B/32").config == clipforge.get_config("ViT-B-32")


def test_eval_and_zeroshot_take_device_and_batch_size(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    clipforge.save(clipforge.create_model("tiny-vit", seed=0), path)
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(path),
                "--task",
                "retrieval",
                "--data",
                "synthetic:split=val,n=20",
                "--device",
                "cpu",
                "--batch-size",
                "7",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads(out.read_text())["metrics"]
    for k in (1, 5, 10):  # CLIP_benchmark's names beside clipforge's
        assert metrics[f"image_retrieval_recall@{k}"] == metrics[f"text_to_image_R@{k}"]
        assert metrics[f"text_retrieval_recall@{k}"] == metrics[f"image_to_text_R@{k}"]
    assert (
        main(["eval", "--model", str(path), "--task", "zeroshot", "--data", "synthetic:n=16", "--out", str(out)]) == 0
    )
    metrics = json.loads(out.read_text())["metrics"]
    assert (
        metrics["acc1"] == metrics["top1"] and metrics["acc5"] == metrics["top5"] and "mean_per_class_recall" in metrics
    )
    capsys.readouterr()
    if not torch.cuda.is_available():
        assert main(["eval", "--model", str(path), "--task", "zeroshot", "--data", "digits", "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
