"""Fault injection: a process killed while writing a checkpoint, a write that fails for lack of space,
a data-loading worker that dies, and a rank that dies under torchrun. Each ends in a clear error (or
a clean kill), and no earlier checkpoint is lost. The tests wait on events the child processes
announce, never on the clock; the only timeouts are watchdogs against a hang."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import clipforge
from clipforge.errors import TrainingError
from clipforge.train.checkpoint import load_training_state

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAIN = [
    "train",
    "--model",
    "tiny-vit",
    "--data",
    "synthetic:n=256,size=32",
    "--set",
    "vision.image_size=32",
    "--set",
    "vision.layers=1",
    "--set",
    "text.layers=1",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--no-progress",
    "--log-every",
    "1",
    "--precision",
    "fp32",
]


def _watchdog(proc: subprocess.Popen, seconds: float = 600) -> threading.Timer:
    timer = threading.Timer(seconds, proc.kill)  # only fires if the child hangs
    timer.start()
    return timer


# Writes checkpoint after checkpoint of ~24 MB, announcing each start and end on stdout.
_WRITER = """
import sys, torch
from pathlib import Path
from clipforge.train.checkpoint import save_training_state
path = Path(sys.argv[1])
for step in range(1, 1000):
    print("start", step, flush=True)
    save_training_state(path, {"step": step, "weights": torch.full((6_000_000,), float(step))})
    print("done", step, flush=True)
"""


@pytest.mark.parametrize("kill_at", [2, 3, 5, 8])
def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tally, tmp_path, kill_at):
    path = tmp_path / "checkpoints" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=ENV)
    timer = _watchdog(proc)
    for line in proc.stdout:
        if line.split() == ["start", str(kill_at)]:
            proc.send_signal(signal.SIGKILL)  # while step `kill_at` is being written
            break
    proc.wait()
    timer.cancel()
    assert proc.returncode == -signal.SIGKILL
    tally["kills during checkpoint writes"] += 1
    left_over = [p for p in path.parent.iterdir() if p.name != "last.pt"]
    tally["kills that left a half-written temporary"] += bool(left_over)
    state = load_training_state(path)
    assert state["step"] in (kill_at - 1, kill_at)  # the last complete write (the kill may land after the rename)
    assert torch.equal(state["weights"], torch.full((6_000_000,), float(state["step"])))


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_failed_checkpoint_write_stops_training_cleanly_and_keeps_the_previous_checkpoint(tally, tmp_path):
    out = tmp_path / "run"
    first = subprocess.run(
        [sys.executable, "-m", "clipforge.cli", *TRAIN, "--steps", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr
    ckpt = out / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()
    limit = ckpt.stat().st_size // 2  # metrics lines fit; a checkpoint does not
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipforge.cli",
            *TRAIN,
            "--steps",
            "4",
            "--out",
            str(out),
            "--resume",
            "--checkpoint-every-steps",
            "1",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
        preexec_fn=_limit_file_size(limit),
    )
    tally["failed writes"] += 1
    assert resumed.returncode == 2, resumed.stderr
    err = resumed.stderr.strip().splitlines()[-1]
    assert err.startswith("clipforge: error: could not write checkpoint") and "--resume" in err, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert ckpt.read_bytes() == before  # the previous checkpoint, byte for byte
    assert [p.name for p in ckpt.parent.iterdir()] == ["last.pt"]  # no temporary left behind
    assert load_training_state(ckpt)["step"] == 2


def test_a_failed_model_save_raises_a_clipforge_error_and_changes_nothing(tally, tmp_path):
    path = tmp_path / "model.safetensors"
    clipforge.save(clipforge.create_model("tiny-vit", seed=1), path)
    before = path.read_bytes()
    code = (
        "import sys, clipforge\n"
        "try:\n"
        f"    clipforge.save(clipforge.create_model('tiny-vit', seed=2), {str(path)!r})\n"
        "except clipforge.CheckpointError as e:\n"
        "    print('refused:', e); sys.exit(3)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
        preexec_fn=_limit_file_size(len(before) // 2),
    )
    tally["failed writes"] += 1
    assert r.returncode == 3 and "refused: could not write" in r.stdout, r.stdout + r.stderr
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


class _DyingWorkerData(torch.utils.data.Dataset):
    """Synthetic pairs, except that a data-loading worker process kills itself on its third sample."""

    def __init__(self, inner) -> None:
        self.inner, self.count = inner, 0

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key):
        if torch.utils.data.get_worker_info() is not None:
            self.count += 1
            if self.count == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        return self.inner[key]


def test_a_dead_data_worker_is_reported_not_hung(tally, tmp_path):
    from clipforge.data import build_dataset
    from clipforge.systems.clip import CLIPTask
    from clipforge.train import TrainConfig, train

    model = clipforge.create_model("tiny-vit", seed=0, vision={"image_size": 32, "layers": 1}, text={"layers": 1})
    ds, _ = build_dataset("synthetic:n=256", clipforge.image_transform(32, train=True), 32)
    cfg = TrainConfig(out=str(tmp_path / "run"), steps=5, batch_size=8, workers=1, progress=False, precision="fp32")
    with pytest.raises(TrainingError, match="data-loading worker died.*--workers 0"):
        train(CLIPTask(model), _DyingWorkerData(ds), cfg)
    tally["dead data workers"] += 1


# Rank 1 dies (as a crash would) after its second optimiser step.
_DYING_RANK = """
import os, sys
from clipforge.systems.clip import task
step = task.CLIPTask.after_step
def after_step(self, model):
    step(self, model)
    self.done = getattr(self, "done", 0) + 1
    if os.environ.get("RANK") == "1" and self.done == 2:
        print("rank 1 dies now", flush=True)
        os._exit(3)
task.CLIPTask.after_step = after_step
from clipforge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_rank_that_dies_under_torchrun_stops_the_other(tally, tmp_path):
    script = Path(tmp_path / "dying_rank.py")
    script.write_text(_DYING_RANK)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        *TRAIN,
        "--steps",
        "50",
        "--out",
        str(tmp_path / "run"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**ENV, "CLIPFORGE_DIST_TIMEOUT": "60"})
    tally["dead ranks"] += 1
    assert "rank 1 dies now" in r.stdout
    assert r.returncode != 0
    assert "exitcode  : 3" in r.stderr or "exitcode: 3" in r.stderr, r.stderr[-2000:]  # torchrun names the rank
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(row["step"] for row in rows) < 50  # it stopped, it did not run on alone
