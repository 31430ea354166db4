"""OpenAI's byte-level BPE tokenizer, reimplemented for speed (ids identical to `clip.tokenize`).

Text is cleaned exactly as OpenAI does (ftfy, HTML unescape twice, whitespace collapse, lower-case),
split with the same regular expression, and each word is BPE-merged once and cached, so encoding
a large caption batch costs little more than the regex.
"""

from __future__ import annotations

import gzip
import html
import re as _stdre
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources

import ftfy
import numpy as np
import regex as re
import torch

from .errors import TokenizerError

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = 49152 - 256 - 2  # OpenAI keeps the first 48,894 merges of the file
_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# ASCII text with no HTML entity and no control characters is left unchanged by ftfy.fix_text, so it
# may skip that (slow) call; everything else goes through the full cleaning.
_PLAIN_ASCII = _stdre.compile(r"[\t\n\r\x20-\x25\x27-\x7e]*\Z")
_WS = re.compile(r"\s+")


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Reversible map from the 256 byte values to printable unicode characters (GPT-2's scheme)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def clean_text(text: str) -> str:
    """OpenAI's cleaning: ftfy.fix_text, HTML unescape twice, strip, collapse whitespace, lower-case."""
    if _PLAIN_ASCII.match(text):
        return " ".join(text.split()).lower()  # same as the regex below for these characters, faster
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _WS.sub(" ", text).strip().lower()


class Tokenizer:
    """Byte-level BPE with a per-word cache. `encode` gives ids without start/end tokens."""

    def __init__(self, bpe_path: str | None = None) -> None:
        if bpe_path is None:
            data = resources.files("clipforge").joinpath("assets", VOCAB_FILE).read_bytes()
        else:
            with open(bpe_path, "rb") as f:
                data = f.read()
        lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_token_id = self.encoder[SOT_TOKEN]
        self.eot_token_id = self.encoder[EOT_TOKEN]
        self.vocab_size = len(vocab)
        self.pattern = re.compile(_PATTERN, re.IGNORECASE)
        self._word_cache: dict[str, list[int]] = {SOT_TOKEN: [self.sot_token_id], EOT_TOKEN: [self.eot_token_id]}

    def _bpe(self, word: str) -> list[str]:
        """Merge the symbols of one byte-encoded word, lowest-rank pair first."""
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        ranks = self.bpe_ranks
        while len(symbols) > 1:
            best, best_rank = None, None
            for pair in zip(symbols, symbols[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _word_ids(self, word: str) -> list[int]:
        ids = self._word_cache.get(word)
        if ids is None:
            encoded = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids = [self.encoder[s] for s in self._bpe(encoded)]
            if len(self._word_cache) < 1_000_000:
                self._word_cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of the cleaned text, without start/end tokens or padding."""
        ids: list[int] = []
        for word in self.pattern.findall(clean_text(text)):
            ids.extend(self._word_ids(word))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of BPE ids (special tokens come out literally); each word end becomes a space."""
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | Sequence[str], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
        """(N, context_length) int64 ids: start token, text, end token, zero padding."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(context_length, int) or not 2 <= context_length <= MAX_CONTEXT:
            raise TokenizerError(f"context_length must be an int from 2 to {MAX_CONTEXT:,}, got {context_length!r}")
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TokenizerError(f"text #{i} is {type(text).__name__}, not str")
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > context_length:
                if not truncate:
                    preview = text if len(text) <= 60 else text[:57] + "..."
                    raise TokenizerError(
                        f"text #{i} ({preview!r}) is {len(ids)} tokens, longer than context_length "
                        f"{context_length}; pass truncate=True to cut it (the last kept token becomes end-of-text)"
                    )
                ids = ids[:context_length]
                ids[-1] = self.eot_token_id
            out[i, : len(ids)] = ids
        return torch.from_numpy(out)


MAX_CONTEXT = 1_000_000  # positions; more is a mistake, and would allocate N x context_length ids


@lru_cache(maxsize=1)
def get_tokenizer() -> Tokenizer:
    """The shared default tokenizer (vocabulary loaded once)."""
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """Token ids exactly as OpenAI's `clip.tokenize`, as a LongTensor of shape (N, context_length).

    Raises TokenizerError for text longer than the context unless `truncate=True`.
    """
    return get_tokenizer()(texts, context_length=context_length, truncate=truncate)
