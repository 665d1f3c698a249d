"""gateway/fleet/messages.py: what a process sends survives the round trip; anything else is dropped."""

from __future__ import annotations

import orjson
import pytest

from gateway.events import ProbeResult
from gateway.fleet.messages import (
    Closed,
    Keys,
    Override,
    Probe,
    Trip,
    decode,
    encode,
    stored_override,
    stored_trip,
    stored_working,
)

RESULT = ProbeResult(ok=False, at=1_700_000_000.5, latency=0.25, error="upstream returned HTTP 500", kind="http_status")


@pytest.mark.parametrize(
    "message",
    [
        Trip("a", "host:1:abc", "a@0123456789ab", "t1", 12.5, 30.0, True),
        Closed("a", "host:1:abc", "a@0123456789ab/eu-nat", "t1"),
        Probe("b", "host:2:def", "b@0123456789ab", RESULT, 0.3),
        Override("b", "host:2:def", "working", "not_working", 7, "e1"),
    ],
    ids=["trip", "closed", "probe", "override"],
)
def test_every_message_survives_the_round_trip(message: Trip | Closed | Probe | Override) -> None:
    """decode(encode(m)) == m for each kind."""
    assert decode(encode(message)) == message


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"v": 2, "kind": "closed", "route": "a", "origin": "o", "trip_id": "t"}',
        b'{"v": 1, "kind": "reboot", "route": "a", "origin": "o"}',
        b'{"v": 1, "kind": "closed", "route": 5, "origin": "o", "trip_id": "t"}',
        b'{"v": 1, "kind": "closed", "route": "a", "origin": "o", "scope": "a@s", "trip_id": ""}',
        b'{"v": 1, "kind": "closed", "route": "a", "origin": "o", "trip_id": "t"}',
        b'{"v": 1, "kind": "trip", "route": "a", "origin": "o", "trip_id": "t", "open_for": 1e400, "duration": 1}',
        b'{"v": 1, "kind": "trip", "route": "a", "origin": "o", "trip_id": "t", "open_for": 0, "duration": 1}',
        b'{"v": 1, "kind": "probe", "route": "a", "origin": "o", "ok": 1, "at": 1, "latency": 0, "started_ago": 0}',
        b'{"v": 1, "kind": "probe", "route": "a", "origin": "o", "ok": true, "at": 1, "latency": -1, "started_ago": 0}',
        b'{"v": 1, "kind": "override", "route": "a", "origin": "o", "target": "breaker", "mode": "not_working", "seq": 1}',
        b'{"v": 1, "kind": "override", "route": "a", "origin": "o", "target": "breaker", "mode": "open", "seq": -1}',
        b'{"v": 1, "kind": "override", "route": "a", "origin": "o", "target": "breaker", "mode": "open", "seq": 1}',
        b'{"v": 1, "kind": "override", "route": "a", "origin": "o", "target": "breaker", "mode": "open"}',
        b'{"v": 1, "kind": "override", "route": "a", "origin": "o", "target": "flag", "mode": "auto"}',
    ],
)
def test_malformed_messages_are_dropped_not_raised(raw: bytes) -> None:
    """Bad JSON, another version, unknown kinds, wrong types, non-finite or out-of-range numbers: None."""
    assert decode(raw) is None


def test_a_long_probe_error_is_cut() -> None:
    """A peer cannot make every process hold and show a megabyte of error text."""
    probe = Probe("a", "o", "a@s", ProbeResult(ok=False, at=1.0, latency=0.1, error="x" * 100_000), 0.0)
    decoded = decode(encode(probe))
    assert isinstance(decoded, Probe)
    assert decoded.result.error is not None
    assert len(decoded.result.error) == 500


def test_stored_values_are_checked() -> None:
    """Trip, working and override keys parse when well-formed and give None otherwise."""
    assert stored_trip(orjson.dumps({"trip_id": "t1", "duration": 30, "trial_ms": 5})) == ("t1", 30.0, 5)
    assert stored_trip(b'{"trip_id": "t1"}') is None
    assert stored_trip(None) is None
    good = {
        "working": False,
        "failures": 2,
        "successes": 0,
        "probe": {"ok": False, "at": 1, "latency": 0.1, "error": None},
    }
    state = stored_working(orjson.dumps(good))
    assert state is not None
    assert (state.working, state.failures, state.last_probe.ok) == (False, 2, False)
    assert stored_working(orjson.dumps({**good, "failures": -1})) is None
    assert stored_override(b"eu-proxy:breaker", b'{"mode": "open", "seq": 5}') == ("eu-proxy", "breaker", "open", 5)
    assert stored_override(b"eu-proxy:breaker", b'{"mode": "open"}') is None
    assert stored_override(b"\xff:working", b'{"mode": "auto", "seq": 5}') is None


def test_keys_of_two_prefixes_never_collide() -> None:
    """Fleets sharing one Redis under different prefixes use disjoint keys and channels."""

    def names(keys: Keys) -> set[str]:
        return {keys.channel, keys.overrides, keys.trip("r"), keys.working("r"), keys.probe_lease("r")}

    assert not names(Keys("fleet-a")) & names(Keys("fleet-b"))
