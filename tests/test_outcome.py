"""gateway/outcome.py: every way an attempt ends is one row of classify(), and nothing else decides.

The table covers each error kind of the tree in gateway/errors.py, plus the rows that are not
upstream failures: the request's own deadline, a client that left (cut short), a cancelled
caller, a rejection of one request, and a bug. The walk below then reads the request path and
finds no other place that looks at an error to decide what it means.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from gateway.errors import (
    UPSTREAM_ERROR_KINDS,
    AllRoutesRateLimitedError,
    UpstreamAuthError,
    UpstreamBlockedError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamInterruptedError,
    UpstreamProtocolError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from gateway.outcome import Outcome, OutcomeKind, classify

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"


def _replayed(error: UpstreamError) -> UpstreamError:
    error.replayable = True
    return error


# (what ended the attempt, finished, kind, counts against the route, retryable, may fail over)
ROWS: list[tuple[str, BaseException | None, bool, OutcomeKind, bool, bool, bool]] = [
    ("completed", None, True, "completed", False, False, False),
    ("client left / cut short / neutral trial", None, False, "cut_short", False, False, False),
    ("caller cancelled", asyncio.CancelledError(), True, "cancelled", False, False, False),
    ("a bug", RuntimeError("boom"), True, "aborted", False, False, False),
    ("client socket reset", ConnectionResetError(), True, "aborted", False, False, False),
    ("connect", UpstreamConnectError("refused"), True, "upstream_failure", True, True, True),
    ("connect timeout", UpstreamTimeoutError("t", phase="connect"), True, "upstream_failure", True, True, True),
    ("first-token timeout", UpstreamTimeoutError("t", phase="first_token"), True, "upstream_failure", True, True, True),
    ("idle timeout", UpstreamTimeoutError("t", phase="idle"), True, "upstream_failure", True, False, True),
    ("own deadline", UpstreamTimeoutError("t", phase="total"), True, "own_deadline", False, False, False),
    ("5xx", UpstreamStatusError("s", upstream_status=503), True, "upstream_failure", True, True, True),
    ("404", UpstreamStatusError("s", upstream_status=404), True, "upstream_failure", True, False, True),
    ("429", UpstreamRateLimitedError("r", upstream_status=429), True, "upstream_failure", True, True, True),
    ("402", UpstreamRateLimitedError("r", upstream_status=402), True, "upstream_failure", True, False, True),
    ("all 429", AllRoutesRateLimitedError("r", retry_after=2), True, "upstream_failure", True, True, True),
    ("blocked", UpstreamBlockedError("b", upstream_status=403), True, "upstream_failure", True, False, True),
    ("auth", UpstreamAuthError("a", upstream_status=401), True, "upstream_failure", True, False, True),
    ("rejection", UpstreamRejectedError("too big", upstream_status=413), True, "rejected", False, False, False),
    ("protocol", UpstreamProtocolError("html"), True, "upstream_failure", True, False, True),
    ("interrupted", UpstreamInterruptedError("cut"), True, "upstream_failure", True, False, True),
    (
        "interrupted while read whole",
        _replayed(UpstreamInterruptedError("cut")),
        True,
        "upstream_failure",
        True,
        True,
        True,
    ),
    ("protocol while read whole", _replayed(UpstreamProtocolError("x")), True, "upstream_failure", True, True, True),
]


@pytest.mark.parametrize(
    ("exc", "finished", "kind", "counts", "retryable", "fails_over"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_classify_table(
    exc: BaseException | None, finished: bool, kind: OutcomeKind, counts: bool, retryable: bool, fails_over: bool
) -> None:
    outcome = classify(exc, finished=finished)
    assert (outcome.kind, outcome.counts_against_route, outcome.retryable, outcome.may_fail_over) == (
        kind,
        counts,
        retryable,
        fails_over,
    )
    # A failure carries its scope cause for the fleet; nothing else has one.
    assert bool(outcome.cause) == counts
    if isinstance(exc, UpstreamError) and counts:
        assert outcome.cause == exc.cause


def test_the_table_covers_every_error_kind() -> None:
    kinds = {row[1].kind for row in ROWS if isinstance(row[1], UpstreamError)}
    assert kinds == set(UPSTREAM_ERROR_KINDS)


def test_only_a_counting_outcome_may_fail_over_and_only_a_completion_succeeds() -> None:
    for _, exc, finished, *_ in ROWS:
        outcome: Outcome = classify(exc, finished=finished)
        assert outcome.may_fail_over == outcome.counts_against_route
        assert outcome.succeeded == (exc is None and finished)


# Facts about an error that only classify() may turn into a decision. Building the error (the
# client naming the deadline that passed, read_whole marking a replayable failure) is not deciding.
DECIDING_READS = {"replayable", "counts_against_route", "retryable", "may_fail_over"}
OUTCOME_HOMES = {"outcome.py"}
# The readers of an Outcome, each reading the verdict, not the error: the Attempt scope (metrics, client
# errors), the breaker (count or not) and the policy (fail over, retry).
OUTCOME_READERS = {"attempt.py", "breaker.py", "upstream.py"}


def _python_files() -> list[Path]:
    return sorted(GATEWAY.rglob("*.py"))


def test_nothing_outside_outcome_py_decides_what_an_error_means() -> None:
    """No module but outcome.py reads the deciding facts of an error or calls classify besides the Attempt."""
    offenders: list[str] = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        name = path.relative_to(GATEWAY).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and node.attr in DECIDING_READS:
                if name not in OUTCOME_HOMES | OUTCOME_READERS:
                    offenders.append(f"{name}:{node.lineno} reads {ast.unparse(node)}")
            elif isinstance(node, ast.Call) and ast.unparse(node.func) == "classify" and name != "attempt.py":
                offenders.append(f"{name}:{node.lineno} calls classify")
            if isinstance(node, ast.Name) and node.id in {"counts_against_upstream", "is_retryable"}:
                offenders.append(f"{name}:{node.lineno} uses {node.id}")
            # Only classify tells a rejection or an own deadline apart from a failure.
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
                types = ast.unparse(node.args[1]) if len(node.args) > 1 else ""
                if ("UpstreamRejectedError" in types or "UpstreamTimeoutError" in types) and name not in {
                    "outcome.py",
                    "errors.py",
                }:
                    offenders.append(f"{name}:{node.lineno} tells {types} apart")
    assert offenders == []


def test_the_breaker_and_the_policy_are_told_outcomes_not_errors() -> None:
    """The breaker's settle takes an Outcome; no breaker command takes an exception any more."""
    tree = ast.parse((GATEWAY / "breaker.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotations = [ast.unparse(arg.annotation) for arg in node.args.args if arg.annotation is not None]
            assert not any("Error" in a or "BaseException" in a for a in annotations), node.name
