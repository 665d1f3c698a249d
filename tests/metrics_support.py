"""Read the gateway's /metrics the way Prometheus would, for exact assertions."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: TestClient[web.Request, web.Application]) -> Samples:
    """Every sample of the exposition, keyed by name and label set."""
    response = await client.get("/metrics")
    assert response.status == 200
    return parse_samples(await response.text())


def parse_samples(exposition: str) -> Samples:
    """Every sample of a text exposition, keyed by name and label set."""
    samples: Samples = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; a missing series is an error, not zero (series must exist from start-up)."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"series {name}{labels} is missing"
    return samples[key]


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a series moved between two scrapes (a series absent before counts from zero)."""
    key = (name, frozenset(labels.items()))
    return value(after, name, **labels) - before.get(key, 0.0)
