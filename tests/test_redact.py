"""gateway.redact: secrets out of URLs before they are shown."""

from __future__ import annotations

import pytest

from gateway.redact import mask_url


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
