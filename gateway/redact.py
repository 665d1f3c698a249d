"""Secrets out of anything shown: URLs with credentials in their user info or query, answer text in log samples."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote

from yarl import URL

MASK: Final = "***"
MIN_SECRET_CHARS: Final = 4  # shorter strings would blank ordinary words
_JSON_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.?)*("\s*:|"|\Z)', re.DOTALL)


def mask_url(url: str) -> str:
    """``url`` with the user info and every query value replaced by ``***``; unparseable input fully masked.

    Query values are all masked, not just names that look secret: a token can hide under any name.
    """
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return MASK
    if "@" in url and parsed.user is None and parsed.password is None:
        return MASK + url[url.rindex("@") :]  # "user:pass@host" without a scheme: yarl sees no user info
    if parsed.user is not None or parsed.password is not None:
        parsed = parsed.with_user(MASK if parsed.user else None).with_password(MASK if parsed.password else None)
    if parsed.query_string:
        parsed = parsed.with_query([(key, MASK) for key in parsed.query])
    if parsed.fragment:
        parsed = parsed.with_fragment(MASK)
    return str(parsed)


def redact_sample(sample: bytes) -> bytes:
    """A bad line's shape without its text, fit for a log: JSON keys stay, other strings become ``"***"``.

    Answer text (which may quote the prompt) travels in JSON string values; a line cut
    mid-string keeps its missing closing quote, so the truncation still shows.
    """

    def mask(match: re.Match[bytes]) -> bytes:
        end = match.group(1)
        if end.endswith(b":"):
            return match.group(0)
        return b'"***' + end

    return _JSON_STRING.sub(mask, sample)


class Scrubber:
    """Replaces configured secrets in free text (an upstream's error may quote what it was sent) by ``***``.

    Each secret is also looked for in every encoding a header or URL carries it in: percent-encoded,
    and base64 with and without padding (``Proxy-Authorization: Basic`` carries ``user:password``
    so; the settings list that pair as a secret of its own). Longest first, so a proxy URL goes
    before its password.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        variants: set[str] = set()
        for secret in secrets:
            encoded = base64.b64encode(secret.encode()).decode()
            variants |= {secret, quote(secret, safe=""), encoded, encoded.rstrip("=")}
        self._secrets = tuple(sorted((v for v in variants if len(v) >= MIN_SECRET_CHARS), key=len, reverse=True))

    def __call__(self, text: str) -> str:
        """``text`` without the secrets; a secret cut short at the very end (a truncated quote) is masked too."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
            for length in range(len(secret) - 1, MIN_SECRET_CHARS - 1, -1):
                if text.endswith(secret[:length]):
                    text = text[: len(text) - length] + MASK
                    break
        return text
