"""The training benchmark on one GPU: clipforge vs transformers' CLIPModel, ViT-B-32 at 224 px,
bf16 autocast and fp32, reporting throughput, each side's step memory, MFU against the GPU's measured matmul
peak, and the bf16-vs-fp32 loss check. Takes a few minutes on one H100-class GPU.

    python benchmarks/gpu_train.py                 # defaults below
    python benchmarks/gpu_train.py --batch 128 --compile

Any option of vs_transformers.py can be given; these are only its GPU defaults.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

GPU_DEFAULTS = [
    "--device",
    "cuda",
    "--model",
    "ViT-B-32",
    "--batch",
    "256",
    "--embed-batch",
    "512",
    "--steps",
    "30",
    "--loss-steps",
    "20",
    "--optimizer",
    "fused",
]

if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit(
            "gpu_train.py needs a CUDA GPU (torch.cuda.is_available() is False); "
            "use vs_transformers.py for the CPU benchmark"
        )
    sys.path.insert(0, str(Path(__file__).parent))
    import vs_transformers

    sys.argv = [sys.argv[0], *GPU_DEFAULTS, *sys.argv[1:]]  # later options override the defaults
    vs_transformers.main()
