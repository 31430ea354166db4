"""Tokenizer speed: a batch of 10,000 captions of 5-25 words with a fresh word cache, against OpenAI's
reference `clip.tokenize` (from the clip-anytorch package) on the same captions, sides alternating.

    python benchmarks/tokenizer_speed.py [--captions 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import time

import clipforge
from clipforge.tokenizer import Tokenizer


def _reference():
    import sys

    sys.path.insert(0, "tests")
    from conftest import _reference_module

    tokenizer = _reference_module("simple_tokenizer").SimpleTokenizer()
    sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
    return lambda texts: [[sot, *tokenizer.encode(t), eot] for t in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(1)
    words = "a photo of red blue green small large circle square triangle on the left right near dog cat".split()
    captions = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 25))) for _ in range(args.captions)]
    try:
        reference = _reference()
    except Exception as e:  # the reference is optional
        print(f"(OpenAI reference unavailable: {e})")
        reference = None
    for r in range(args.rounds):
        t0 = time.perf_counter()
        Tokenizer()(captions)  # fresh word cache each round
        ours = time.perf_counter() - t0
        line = f"round {r + 1}: clipforge {ours:.2f} s ({args.captions / ours:,.0f} captions/s)"
        if reference is not None:
            t0 = time.perf_counter()
            reference(captions)
            theirs = time.perf_counter() - t0
            line += f", OpenAI reference {theirs:.2f} s: {theirs / ours:.1f}x"
        print(line)
    assert clipforge.tokenize(captions[:1]).shape == (1, 77)


if __name__ == "__main__":
    main()
