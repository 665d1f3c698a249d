"""gateway.redact: secrets out of URLs, and answer text out of log samples, before they are shown."""

from __future__ import annotations

import pytest

from gateway.redact import mask_url, redact_sample


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://prod-backend-k8s.flowgpt.com/v3/chat-anonymous", "https://prod-backend-k8s.flowgpt.com/v3/chat-anonymous"),
        ("http://user:password@10.0.0.5:3128", "http://***:***@10.0.0.5:3128"),
        ("http://token@10.0.0.5:3128", "http://***@10.0.0.5:3128"),
        ("https://api.example/x?key=abc&model=m", "https://api.example/x?key=***&model=***"),
        ("https://api.example/x#access_token=abc", "https://api.example/x#***"),
        ("user:password@10.0.0.5:3128", "***@10.0.0.5:3128"),
    ],
)
def test_user_info_query_values_and_fragments_are_masked(url: str, shown: str) -> None:
    """Whatever could carry a credential is replaced by *** and the rest stays readable."""
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    ("sample", "logged"),
    [
        (b'{"event":"text","data":"my secret prompt', b'{"event":"***","data":"***'),
        (b'{"event":"text","data":"esc\\"aped"}', b'{"event":"***","data":"***"}'),
        (b'{"event":"text","data":"cut after a backslash\\', b'{"event":"***","data":"***'),
        (b'{"event":"text","data":5}', b'{"event":"***","data":5}'),
        (b"<!DOCTYPE html><title>Maintenance</title>", b"<!DOCTYPE html><title>Maintenance</title>"),
        (b"data: [not-json]", b"data: [not-json]"),
    ],
)
def test_bad_line_samples_are_redacted_for_the_log(sample: bytes, logged: bytes) -> None:
    """A bad line's sample keeps its shape (keys, punctuation, HTML) but never the text of a JSON string."""
    assert redact_sample(sample) == logged
