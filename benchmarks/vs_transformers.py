"""clipforge against Hugging Face transformers' CLIPModel on the same architecture, weights and inputs,
in one process: training-step, image-embedding and text-embedding throughput, at bf16 (autocast on
both sides; only where the hardware has native bf16, unless --precision bf16) and fp32, with achieved
FLOP/s as a fraction of this machine's measured matmul peak.

MFU counts the FLOPs of the standard computation, transformers' (every token through every block),
for both sides, so it is proportional to throughput; "executed" is each side's own FLOP count over
its time (clipforge skips work its pooled outputs do not depend on, so it executes fewer).

    python benchmarks/vs_transformers.py --model ViT-B-32 --batch 32 --steps 5
    python benchmarks/vs_transformers.py --model small-vit --batch 64 --steps 10
    python benchmarks/vs_transformers.py --device cuda --model ViT-B-32 --batch 256 --embed-batch 512   # GPU

Both sides get captions of 5-25 words padded to the longest caption in the batch (transformers'
`padding=True`, its documented setting), SDPA attention, and torch.optim.AdamW (`--optimizer`:
foreach by default, or fused). Peak memory is the increase over the memory in use before the case:
heap memory in use (glibc mallinfo2) sampled every 1 ms on the CPU, `torch.cuda.max_memory_allocated` on a GPU.
"""

from __future__ import annotations

import argparse
import platform
import random
import threading
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

import clipforge
from clipforge.systems.clip import hf as cf_hf

WORDS = (
    "a photo of the red blue green small large dog cat bird car tree house person street sky water "
    "on in near with two three old young running sitting field city beach night day white black"
).split()


def captions(n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))) for _ in range(n)]


DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    if DEVICE.type == "cuda":
        n, reps = 8192, 20
    a, b = torch.randn(n, n, dtype=dtype, device=DEVICE), torch.randn(n, n, dtype=dtype, device=DEVICE)
    a @ b
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def _heap_in_use() -> int:
    """Bytes the C allocator has handed out and not taken back (glibc mallinfo2; torch's CPU
    tensors come from it), so memory freed by an earlier case and reused is not counted twice."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (n, ctypes.c_size_t)
            for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        ]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


@contextmanager
def peak_memory(result: dict):
    """Sets result["peak_mib"]: the peak memory in use during the block minus that before it."""
    if DEVICE.type == "cuda":
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        yield
        sync()
        result["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        return
    base, peak, done = _heap_in_use(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _heap_in_use())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        result["peak_mib"] = (max(peak[0], _heap_in_use()) - base) / 2**20


def build(name: str):
    import transformers

    ours = clipforge.create_model(name, seed=0)
    cfg = cf_hf.config_to_hf(ours.config)
    hf_cfg = transformers.CLIPConfig(
        text_config=cfg["text_config"], vision_config=cfg["vision_config"], projection_dim=cfg["projection_dim"]
    )
    theirs = transformers.CLIPModel(hf_cfg)
    try:
        theirs.set_attn_implementation("sdpa")
    except Exception:  # older transformers pick SDPA by default
        pass
    theirs.load_state_dict(cf_hf.clipforge_to_hf(ours.state_dict()), strict=False)
    return ours.to(DEVICE), theirs.to(DEVICE)


def batch(size: int, image_size: int, rng: random.Random):
    images = torch.randn(size, 3, image_size, image_size)
    tokens = clipforge.tokenize(captions(size, rng), truncate=True)
    longest = int((tokens != 0).sum(1).max())
    tokens = tokens[:, :longest]
    return images.to(DEVICE), tokens.to(DEVICE), (tokens != 0).long().to(DEVICE)


def train_step_fn(side: str, model, opt):
    def step(images, tokens, mask):
        if side != "transformers":
            out = model(images, tokens)
            loss = clipforge.clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
        else:
            loss = model(input_ids=tokens, attention_mask=mask, pixel_values=images, return_loss=True).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach().float()

    return step


def timed(fn, data, warmup: int, steps: int, bf16: bool) -> tuple[float, list[float]]:
    losses = []
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            start = time.perf_counter()
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
            out = fn(*data[i % len(data)])
        if out is not None:
            losses.append(out)
    sync()
    return (time.perf_counter() - start) / steps, [float(x) for x in losses]


def count_flops(fn, data, bf16: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
        fn(*data[0])
    return float(counter.get_total_flops())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--embed-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--loss-steps", type=int, default=20, help="steps for the bf16-vs-fp32 loss check")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--optimizer", choices=["foreach", "fused"], default="foreach", help="AdamW implementation (both sides)"
    )
    p.add_argument("--compile", action="store_true", help="also time clipforge under torch.compile")
    p.add_argument(
        "--precision",
        choices=["auto", "both", "bf16", "fp32"],
        default="auto",
        help="auto: bf16 and fp32 where bf16 is native on the device, else fp32 only",
    )
    args = p.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.manual_seed(0)
    rng = random.Random(0)
    from clipforge.precision import native_bf16

    native = native_bf16(DEVICE)
    precisions = {"auto": ["bf16", "fp32"] if native else ["fp32"], "both": ["bf16", "fp32"]}.get(
        args.precision, [args.precision]
    )
    if "bf16" not in precisions:
        print("bf16 is emulated on this machine (no native bf16 matmul): timing fp32 only (--precision both to force)")
    peaks = {
        "bf16": matmul_peak(torch.bfloat16) if "bf16" in precisions else float("nan"),
        "fp32": matmul_peak(torch.float32),
    }
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{platform.machine()} CPU"
    print(
        f"machine: {where}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"matmul peak bf16 {peaks['bf16'] / 1e12:.2f} TFLOP/s, fp32 {peaks['fp32'] / 1e12:.2f} TFLOP/s"
    )
    size = clipforge.get_config(args.model).vision.image_size
    data = [batch(args.batch, size, rng) for _ in range(4)]
    embed = [batch(args.embed_batch, size, rng) for _ in range(2)]
    results = {}
    nominal_flops: dict = {}  # (precision, case) -> transformers' FLOPs, the standard computation
    for precision in precisions:
        bf16 = precision == "bf16"
        sides = ["transformers", "clipforge"] + (["clipforge+compile"] if args.compile else [])
        for side in sides:
            ours, theirs = build(args.model)
            model = (theirs if side == "transformers" else ours).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, **{args.optimizer: True})
            step = train_step_fn(side, model, opt)
            flops = {"train": count_flops(step, data, bf16)}
            nominal = nominal_flops.setdefault((precision, "train"), flops["train"])
            if side.endswith("+compile"):  # compile the model's forward; loss, backward and optimiser as before
                model.forward = torch.compile(model.forward)
            r: dict = {}
            with peak_memory(mem := {}):
                sec, _ = timed(step, data, 2 if side.endswith("+compile") else 1, args.steps, bf16)
            r["train"], r["train_mib"] = args.batch / sec, mem["peak_mib"]
            r["train_mfu"] = nominal / sec / peaks[precision]
            r["train_hfu"] = flops["train"] / sec / peaks[precision]
            model.eval()
            with torch.no_grad():
                if side == "transformers":
                    img_fn = lambda i, t, m, model=model: model.get_image_features(pixel_values=i)  # noqa: E731
                    txt_fn = lambda i, t, m, model=model: model.get_text_features(input_ids=t, attention_mask=m)  # noqa: E731
                else:
                    img_fn = lambda i, t, m, model=model: model.encode_image(i)  # noqa: E731
                    txt_fn = lambda i, t, m, model=model: model.encode_text(t)  # noqa: E731
                for case, fn in (("image", img_fn), ("text", txt_fn)):
                    flops[case] = count_flops(fn, embed, bf16)
                    nominal = nominal_flops.setdefault((precision, case), flops[case])
                    with peak_memory(mem := {}):
                        sec, _ = timed(lambda *b, fn=fn: (fn(*b), None)[1], embed, 1, 3, bf16)
                    r[case], r[f"{case}_mib"] = args.embed_batch / sec, mem["peak_mib"]
                    r[f"{case}_mfu"] = nominal / sec / peaks[precision]
                    r[f"{case}_hfu"] = flops[case] / sec / peaks[precision]
            results[(precision, side)] = r
            print(
                f"{precision} {side:<18}: "
                + ", ".join(
                    f"{label} {r[case]:7.1f} {unit}/s (MFU {r[case + '_mfu']:.1%}, executed {r[case + '_hfu']:.1%}, "
                    f"+{r[case + '_mib']:.0f} MiB)"
                    for case, label, unit in (
                        ("train", "train", "pairs"),
                        ("image", "image embed", "img"),
                        ("text", "text embed", "txt"),
                    )
                )
            )
        b = results[(precision, "transformers")]
        for side in sides:
            if side != "transformers":
                a = results[(precision, side)]
                print(
                    f"{precision} ratio {side}/transformers: train {a['train'] / b['train']:.2f}x, image "
                    f"{a['image'] / b['image']:.2f}x, text {a['text'] / b['text']:.2f}x"
                )
    # numerical checks: bf16 training loss after N steps vs fp32, and bf16 image embeddings vs fp32
    if "bf16" not in precisions or args.loss_steps <= 0:
        return
    losses = {}
    for precision in ("bf16", "fp32"):
        ours, _ = build(args.model)
        opt = torch.optim.AdamW(ours.parameters(), lr=1e-5, **{args.optimizer: True})
        _, trace = timed(train_step_fn("clipforge", ours.train(), opt), data, 0, args.loss_steps, precision == "bf16")
        losses[precision] = trace[-1]
    ours, _ = build(args.model)
    ours.eval()
    with torch.no_grad():
        ref = ours.encode_image(embed[0][0])
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            low = ours.encode_image(embed[0][0]).float()
    cos = F.cosine_similarity(ref, low, dim=-1).min().item()
    rel = abs(losses["bf16"] - losses["fp32"]) / losses["fp32"]
    print(
        f"loss after {args.loss_steps} steps: bf16 {losses['bf16']:.4f} vs fp32 {losses['fp32']:.4f} "
        f"({rel:.2%} apart); bf16 image embeddings: min cosine to fp32 {cos:.5f}"
    )


if __name__ == "__main__":
    main()
