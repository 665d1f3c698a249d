"""A FlowGpt-compatible upstream simulator with runtime fault injection.

Used by integration tests, benchmarks, alert drills and load tests; see docs/simulator.md.
"""

from __future__ import annotations

from gateway.simulator.answers import expected_answer, split_answer
from gateway.simulator.faults import CLOUDFLARE_PAGE, SimFaults
from gateway.simulator.options import SimOptions
from gateway.simulator.routes import DEFAULT_ROUTE, RouteError, RouteLimitError, RouteNameError
from gateway.simulator.server import Simulator, build_app, create_simulator_app
from gateway.simulator.state import SIM_STATE, SimState
from gateway.simulator.stats import SimStats

__all__ = [
    "CLOUDFLARE_PAGE",
    "DEFAULT_ROUTE",
    "SIM_STATE",
    "RouteError",
    "RouteLimitError",
    "RouteNameError",
    "SimFaults",
    "SimOptions",
    "SimState",
    "SimStats",
    "Simulator",
    "build_app",
    "create_simulator_app",
    "expected_answer",
    "split_answer",
]
