"""What a route's fleet state is shared with: its scopes.

Processes share a fact about a route only when both reach the upstream the same way: the same
route name, URL and proxy (the proxy's host, not its credentials). Within that:

* failures that say the upstream itself is down (5xx, timeouts after connecting, broken streams,
  protocol errors) are shared by every process of the route's *upstream scope*;
* failures whose cause may lie in one host's way out (a block, a rate limit, connect errors and
  connect timeouts, auth, any other 4xx, which a per-host proxy, WAF or NAT address can cause) are
  shared only within a declared *egress group*
  (``GATEWAY_EGRESS``, or the route's ``egress``): one value per set of hosts behind one NAT or
  proxy. Unset, such failures stay with the process that saw them.

So replicas on one network share outages, and one blocked host never takes the route down for
the others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from yarl import URL

# Failure causes (``UpstreamError.cause``) that say the upstream itself is down. Every other cause
# (connect errors and connect timeouts, blocks, rate limits, auth, a 4xx such as a WAF's 403 or a
# proxy's 407, a probe that got no text in time, anything unknown) may be one host's path.
UPSTREAM_CAUSES: Final = frozenset({"http_5xx", "timeout", "protocol", "interrupted"})
EGRESS_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,64}$"


@dataclass(frozen=True, slots=True)
class Scopes:
    """The scopes of one route in this process: upstream-wide, and the egress group's (if declared)."""

    upstream: str
    egress: str | None = None

    @classmethod
    def of(cls, name: str, url: str, proxy: str | None, egress: str | None) -> Scopes:
        """The scopes of route ``name`` reached at ``url`` through ``proxy`` from egress group ``egress``."""
        proxy_host = "" if proxy is None else str(URL(proxy).with_user(None).with_password(None))
        digest = hashlib.sha256(f"{url}\n{proxy_host}".encode()).hexdigest()[:12]
        upstream = f"{name}@{digest}"
        return cls(upstream, None if egress is None else f"{upstream}/{egress}")

    def for_failure(self, cause: str | None) -> str | None:
        """The scope a failure of ``cause`` is shared in; None: not shared (an unknown cause counts as local)."""
        return self.upstream if cause in UPSTREAM_CAUSES else self.egress

    @property
    def all(self) -> tuple[str, ...]:
        """Every scope this route shares in, widest first."""
        return (self.upstream,) if self.egress is None else (self.upstream, self.egress)

    def __contains__(self, scope: object) -> bool:
        return scope == self.upstream or (self.egress is not None and scope == self.egress)
