"""Fleet: several gateway processes share upstream health decisions through Redis.

Only decisions travel (breaker trips and closes, the single-flight half-open trial, the probe
lease and its results, operator overrides); failure counting stays local. The request path
never waits on Redis: admission reads local state that the subscription keeps current.
"""

from gateway.fleet.shared import SharedHealth

__all__ = ["SharedHealth"]
