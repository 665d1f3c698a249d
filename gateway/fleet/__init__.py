"""Fleet: several gateway processes share upstream health decisions through Redis.

Only decisions travel (breaker trips and closes, the single-flight half-open trial, the probe
lease and its results, operator overrides); failure counting stays local. Admission reads
local state that the subscription keeps current; the one wait on Redis in the request path
is a half-open trial confirming its claim, bounded by the Redis timeout.
"""

from gateway.fleet.shared import SharedHealth

__all__ = ["SharedHealth"]
