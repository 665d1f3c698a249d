"""Secrets out of anything shown: URLs with credentials in their user info or query, answer text in log samples."""

from __future__ import annotations

import re
from typing import Final

from yarl import URL

MASK: Final = "***"
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
