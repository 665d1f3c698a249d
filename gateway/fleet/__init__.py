"""Fleet: several gateway processes share upstream health facts through Redis.

Only facts travel, each with a TTL (breaker trips and closes, the probe lease and its results,
operator overrides), and only between processes of the same route scope (:mod:`gateway.scope`).
Failure counting and half-open trials stay local. Admission reads local state that the
subscription keeps current: the request path waits on Redis nowhere.
"""

from gateway.fleet.shared import SharedHealth

__all__ = ["SharedHealth"]
