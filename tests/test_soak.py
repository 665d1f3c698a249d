"""A short soak against a flapping upstream (the long one: ``python -m tests.soak``, docs/reliability.md)."""

from __future__ import annotations

import logging
from typing import Final

import pytest

from tests.soak import SoakConfig, run_soak_within

# Growth allowed across the measured run, after a warm-up (gateway and simulator share the
# process). Clean runs grow 1-2 MiB; keeping ~14 KiB per request (a response, a buffer) would not fit.
RSS_GROWTH_LIMIT_KIB: Final = 8 * 1024
# Non-streamed answers whose upstream broke or stalled after the first token: never replayed.
AFTER_FIRST_TOKEN: Final = frozenset({"502 upstream_interrupted", "504 upstream_timeout"})


@pytest.mark.slow
async def test_short_soak_under_a_flapping_upstream(caplog: pytest.LogCaptureFixture) -> None:
    """600 requests at concurrency 50 all end in time with an allowed status; breaker and flag follow the upstream."""
    caplog.set_level(logging.WARNING)
    config = SoakConfig(requests=600, concurrency=50, flap_min=0.5, flap_max=1.2, warmup_requests=100, seed=7)

    report = await run_soak_within(config, limit=150)

    print(report.summary())
    assert report.problems() == []
    assert report.outcomes["hang"] == 0
    assert max(report.latencies) < report.deadline
    assert not [key for key in report.outcomes if key.startswith("500")]
    assert report.outcomes["200"] + report.outcomes["200 stream"] > 0  # it was not all failure
    assert report.breaker_opened >= 1
    assert report.breaker_closed >= 1
    assert False in report.working_flips
    assert report.working_flips[-1] is True
    assert report.rss_end_kib - report.rss_start_kib < RSS_GROWTH_LIMIT_KIB
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


@pytest.mark.slow
async def test_short_soak_with_three_routes_one_flapping(caplog: pytest.LogCaptureFixture) -> None:
    """Three routes, r0 flapping: no refusal and no failure before the first token reaches a client."""
    caplog.set_level(logging.WARNING)
    config = SoakConfig(
        requests=600, concurrency=50, flap_min=0.5, flap_max=1.2, warmup_requests=100, seed=7, routes=3
    )

    report = await run_soak_within(config, limit=150)

    print(report.summary())
    assert report.problems() == []
    assert report.outcomes["hang"] == 0
    # Only a break after the first token (which nothing may replay) can reach a client as a 5xx.
    assert not [k for k in report.outcomes if k.startswith("5") and k not in AFTER_FIRST_TOKEN], report.outcomes
    assert report.breaker_opened >= 1


@pytest.mark.slow
async def test_short_soak_with_two_replicas_sharing_a_redis_that_is_paused_and_killed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two replicas, three routes, Redis paused then killed under load: every request ends, none is lost."""
    caplog.set_level(logging.WARNING)
    config = SoakConfig(
        requests=900, concurrency=50, flap_min=0.5, flap_max=1.2, warmup_requests=100, seed=7, routes=3, replicas=2
    )

    report = await run_soak_within(config, limit=150)

    print(report.summary())
    assert report.problems() == []
    assert report.requests == config.requests
    assert not [k for k in report.outcomes if k.startswith(("hang", "client error"))], report.outcomes
    assert not [k for k in report.outcomes if k.startswith("5") and k not in AFTER_FIRST_TOKEN], report.outcomes
    assert "paused" in report.redis_events
