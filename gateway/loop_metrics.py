"""Counter, Gauge and Histogram without a lock, for the series the event loop alone writes.

prometheus_client's single-process value (``values.MutexValue``) takes a ``threading.Lock`` on every
increment and read, its ``inc``/``observe`` check on every call that the metric is a child, and
``observe(..., exemplar=...)`` validates the exemplar's label names with regular expressions on
every call. Per chat request that is ~15 increments and ~4 observations.

Why no lock is safe here: every write to these series happens on the event-loop thread (handlers,
middlewares, the upstream attempt; ``asyncio.to_thread`` work such as token counting touches no
metric), so there is one writer, and ``/metrics`` runs ``generate_latest`` synchronously on that
same loop, between writes. Even a reader on another thread could only see a whole float: storing a
float attribute is a single reference store under the GIL, never torn. (The standard class locks
each value apart, so a scrape could already see a histogram's sum and buckets one observation apart.)

The classes subclass the standard ones and keep their ``labels()``, ``collect()`` and sample code:
names, help, labels, buckets, ``_created``, exemplars and ``registry.get_sample_value`` read the
same; only the value object and the hot write methods differ. Rare and erroneous calls (a negative
increment, a counter exemplar, a labelled parent) go through the standard method and its errors.

Multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, ``serve --workers``) keeps the standard classes:
there each value is an mmap file that the scrape sums across workers. :func:`metric_classes`
chooses once, when the families are built.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from typing import Final, NamedTuple

from prometheus_client import Counter, Gauge, Histogram, values
from prometheus_client.samples import Exemplar, Timestamp
from prometheus_client.validation import _is_valid_legacy_labelname, _validate_exemplar

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
EXEMPLAR_MAX_RUNES: Final = 128  # OpenMetrics: an exemplar's label names and values together
# Exemplar label names already seen valid. Only names valid under the strict (legacy) rule are kept:
# they stay valid whichever rule prometheus_client's validation switch selects later.
_VALID_EXEMPLAR_NAMES: set[str] = set()
# An exemplar's fields as a plain tuple (labels, value, timestamp): building it costs a few bytecodes
# where an Exemplar costs a Python-level __new__; the Exemplar is made when a scrape reads it.
RawExemplar = tuple[dict[str, str], float, float | Timestamp | None]


class LoopValue:
    """A float and its exemplar with ``MutexValue``'s interface and no lock: event-loop writers only."""

    __slots__ = ("exemplar", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.exemplar: RawExemplar | None = None

    def inc(self, amount: float) -> None:
        self.value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self.value = value

    def set_exemplar(self, exemplar: Exemplar) -> None:
        self.exemplar = exemplar

    def get(self) -> float:
        return self.value

    def get_exemplar(self) -> Exemplar | None:
        raw = self.exemplar
        return None if raw is None else Exemplar(*raw)


class LoopCounter(Counter):
    """A :class:`Counter` whose children count without a lock (see the module's docstring)."""

    _value: LoopValue

    def _metric_init(self) -> None:
        super()._metric_init()  # _created and anything else the library sets, then the value swapped
        self._value = LoopValue()

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if amount < 0 or exemplar:  # the standard checks, error and exemplar handling
            super().inc(amount, exemplar)
            return
        try:
            self._value.value += amount
        except AttributeError:  # a labelled parent has no value: the standard ValueError
            super().inc(amount)
            raise


class LoopGauge(Gauge):
    """A :class:`Gauge` whose children move without a lock (see the module's docstring)."""

    _value: LoopValue

    def _metric_init(self) -> None:
        super()._metric_init()
        self._value = LoopValue()

    def inc(self, amount: float = 1) -> None:
        if self._is_most_recent:
            super().inc(amount)  # raises the standard RuntimeError
        try:
            self._value.value += amount
        except AttributeError:
            super().inc(amount)
            raise

    def dec(self, amount: float = 1) -> None:
        if self._is_most_recent:
            super().dec(amount)  # raises the standard RuntimeError
        try:
            self._value.value -= amount
        except AttributeError:
            super().dec(amount)
            raise

    def set(self, value: float) -> None:
        # MutexValue drops the timestamp a "mostrecent" gauge passes; only mmap files keep it.
        try:
            self._value.value = float(value)
        except AttributeError:
            super().set(value)
            raise


class LoopHistogram(Histogram):
    """A :class:`Histogram` whose children observe without a lock (see the module's docstring)."""

    _sum: LoopValue
    _buckets: list[LoopValue]

    def _metric_init(self) -> None:
        super()._metric_init()
        self._sum = LoopValue()
        self._buckets = [LoopValue() for _ in self._upper_bounds]

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        try:
            bucket = self._count(amount)
        except AttributeError:  # a labelled parent has no value: the standard ValueError
            super().observe(amount)
            raise
        if bucket is not None and exemplar:
            _check_exemplar(exemplar)  # after counting, as the standard class does
            bucket.exemplar = (exemplar, amount, time.time())

    def observe_valid(self, amount: float, exemplar: dict[str, str] | None) -> None:
        """A child's :meth:`observe` with an exemplar its caller built valid, so not checked again.

        Valid: label names matching ``[a-zA-Z_][a-zA-Z0-9_]*`` (not starting ``__``), and names and
        values of at most :data:`EXEMPLAR_MAX_RUNES` characters together; past that limit Prometheus
        would refuse the whole OpenMetrics scrape.
        """
        bucket = self._count(amount)
        if bucket is not None and exemplar:
            bucket.exemplar = (exemplar, amount, time.time())

    def _count(self, amount: float) -> LoopValue | None:
        """Add ``amount`` to the sum and count it in its bucket, which is returned (None for NaN)."""
        self._sum.value += amount
        bounds = self._upper_bounds
        # The first bound >= amount, as the standard loop finds it (the last bound is +Inf). NaN is
        # below no bound: bisect answers 0 and the test fails, so it lands in no bucket, as there.
        index = bisect_left(bounds, amount)
        if amount <= bounds[index]:
            bucket = self._buckets[index]
            bucket.value += 1
            return bucket
        return None


def _check_exemplar(exemplar: dict[str, str]) -> None:
    """``_validate_exemplar`` with each label name's check done once: the same exemplars pass and fail."""
    runes = 0
    for name, value in exemplar.items():
        if name not in _VALID_EXEMPLAR_NAMES:
            if not _is_valid_legacy_labelname(name):
                # Raises, or passes a name only the UTF-8 rule allows (checked again next time).
                _validate_exemplar(exemplar)  # type: ignore[no-untyped-call]
                return
            _VALID_EXEMPLAR_NAMES.add(name)
        runes += len(name) + len(value)
    if runes > EXEMPLAR_MAX_RUNES:
        _validate_exemplar(exemplar)  # type: ignore[no-untyped-call]  # the standard ValueError


class MetricClasses(NamedTuple):
    """The classes to build the event loop's families with."""

    counter: type[Counter]
    gauge: type[Gauge]
    histogram: type[Histogram]


STANDARD: Final = MetricClasses(Counter, Gauge, Histogram)
LOOP: Final = MetricClasses(LoopCounter, LoopGauge, LoopHistogram)


def multiprocess() -> bool:
    """Whether values live in mmap files: the variable is set, or was when prometheus_client was imported."""
    return bool(os.environ.get(MULTIPROC_ENV)) or values.ValueClass is not values.MutexValue


def metric_classes() -> MetricClasses:
    """The lock-free classes in a single process; the standard ones when workers share mmap files."""
    return STANDARD if multiprocess() else LOOP
