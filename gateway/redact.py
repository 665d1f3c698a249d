"""Secrets out of anything shown: URLs with credentials in their user info or query."""

from __future__ import annotations

from typing import Final

from yarl import URL

MASK: Final = "***"


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
