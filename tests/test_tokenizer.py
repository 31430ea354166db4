import gzip
import hashlib
import random
from importlib import resources

import pytest
import torch

import clipforge
from clipforge.tokenizer import Tokenizer

# Ids written down from OpenAI's tokenizer (SimpleTokenizer of openai/CLIP).
GOLDEN = {
    "a photo of a cat.": [320, 1125, 539, 320, 2368, 269],
    "A DIAGRAM of the Eiffel Tower, 1889!": [320, 22697, 539, 518, 29720, 4730, 267, 272, 279, 279, 280, 256],
    "naïve café — 東京 🚀": [1097, 35689, 563, 15304, 2005, 48338, 21078, 361, 13542],
    "don't stop; it's 3.14159": [847, 713, 1691, 282, 585, 568, 274, 269, 272, 275, 272, 276, 280],
    "&lt;b&gt;bold&lt;/b&gt; &amp;amp;": [283, 321, 285, 8911, 34308, 321, 285, 261],
}


def test_vocabulary_file_is_openais():
    data = resources.files("clipforge").joinpath("assets", "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    assert hashlib.md5(data).hexdigest() == "933b7abbbbde62c36f02f0e6ccde464f"
    assert len(gzip.decompress(data).decode().split("\n")) > 48894
    tok = clipforge.get_tokenizer()
    assert tok.vocab_size == 49408 and tok.sot_token_id == 49406 and tok.eot_token_id == 49407


@pytest.mark.parametrize("text", list(GOLDEN))
def test_golden_ids(text):
    assert clipforge.get_tokenizer().encode(text) == GOLDEN[text]
    ids = clipforge.tokenize(text)
    assert ids.dtype == torch.long and ids.shape == (1, 77)
    n = len(GOLDEN[text])
    assert ids[0, : n + 2].tolist() == [49406, *GOLDEN[text], 49407]
    assert ids[0, n + 2 :].eq(0).all()


_PIECES = [
    "a",
    "photo",
    "of",
    "the",
    "dog",
    "DOG",
    "Dog's",
    "don't",
    "we'll",
    "I'M",
    "they've",
    "it'd",
    "3",
    "42",
    "3.14",
    "1,000,000",
    "2021-03-04",
    "#hashtag",
    "@user",
    "http://example.com/a?b=c&d=e",
    "!!!",
    "?!",
    "...",
    "—",
    "–",
    "(paren)",
    "[brackets]",
    "{braces}",
    '"quoted"',
    "‘curly’",
    "“quotes”",
    "café",
    "naïve",
    "Ångström",
    "façade",
    "Straße",
    "Ελληνικά",
    "русский",
    "العربية",
    "עברית",
    "हिन्दी",
    "東京",
    "日本語のテキスト",
    "中文字符",
    "한국어",
    "ไทย",
    "🚀",
    "👍🏽",
    "👨‍👩‍👧",
    "🇫🇷",
    "❤️",
    "™",
    "©",
    "½",
    "ﬁ",
    "cafÃ©",
    "Ã¼ber",
    "â€œmojibakeâ€\x9d",
    "&amp;",
    "&lt;tag&gt;",
    "&amp;amp;",
    "&#39;",
    "&quot;",
    "&nbsp;",
    "\t",
    "\n",
    "\r\n",
    "   ",
    "\u00a0",
    "\u200b",
    "\x00",
    "\x1b[31m",
    "\x7f",
    "<|endoftext|>",
    "<|startoftext|>",
    "ＦＵＬＬＷＩＤＴＨ",
    "x²",
    "€100",
    "$5.99",
    "50%",
    "a/b\\c",
    "snake_case",
    "CamelCaseWord",
    "e-mail",
]


def _random_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.choice([1, 2, 5, 10, 30]) if rng.random() > 0.02 else 400  # some very long texts
        sep = rng.choice([" ", " ", "", "  ", "\n"])
        out.append(sep.join(rng.choice(_PIECES) for _ in range(k)))
    # random code points, including unassigned/odd ones
    for _ in range(200):
        out.append("".join(chr(rng.randrange(1, 0x2FFFF)) for _ in range(rng.randint(1, 12))))
    return out


def test_parity_with_openai_tokenizer(openai_tokenizer):
    tok = Tokenizer()
    texts = _random_strings(3000)
    mismatches = [t for t in texts if tok.encode(t) != openai_tokenizer.encode(t)]
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:3]!r}"


def test_decode_roundtrip():
    tok = clipforge.get_tokenizer()
    assert tok.decode(tok.encode("a photo of a cat.")).strip() == "a photo of a cat ."


def test_too_long_text_raises_clear_error():
    text = "word " * 100
    with pytest.raises(clipforge.TokenizerError, match="longer than context_length 77.*truncate=True"):
        clipforge.tokenize(["short", text])


def test_truncate_keeps_end_of_text_last(openai_tokenizer):
    text = "word " * 100
    ids = clipforge.tokenize(text, truncate=True)[0]
    expected = [49406, *openai_tokenizer.encode(text)][:76] + [49407]
    assert ids.tolist() == expected


def test_custom_context_length():
    ids = clipforge.tokenize(["a cat", "a dog"], context_length=16)
    assert ids.shape == (2, 16)
    with pytest.raises(clipforge.TokenizerError):
        clipforge.tokenize("a b c d e f g h i j k l m n o p", context_length=8)


def test_non_string_input_is_rejected():
    with pytest.raises(clipforge.TokenizerError, match="not str"):
        clipforge.tokenize(["ok", 3])  # type: ignore[list-item]


def test_batch_of_10000_captions():
    """Speed is measured by benchmarks/tokenizer_speed.py; here only the result."""
    rng = random.Random(1)
    words = "a photo of red blue green small large circle square triangle on the left right near dog cat".split()
    captions = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 25))) for _ in range(10_000)]
    ids = Tokenizer()(captions)
    assert ids.shape == (10_000, 77)
    assert torch.equal(ids[123], clipforge.tokenize(captions[123])[0])
