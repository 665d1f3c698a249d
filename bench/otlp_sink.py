"""A do-nothing OTLP/HTTP collector for the benchmark: accepts POST /v1/traces and answers 200.

    python -m bench.otlp_sink --port 4318

Spans are counted (GET /count), not decoded: it stands in for a collector so that the gateway's
tracing cost is measured with a real exporter talking HTTP, on loopback.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from aiohttp import web

_RECEIVED = web.AppKey("received", list[int])


async def _traces(request: web.Request) -> web.Response:
    request.app[_RECEIVED].append(len(await request.read()))
    return web.Response(body=b"", content_type="application/x-protobuf")


async def _count(request: web.Request) -> web.Response:
    sizes = request.app[_RECEIVED]
    return web.json_response({"batches": len(sizes), "bytes": sum(sizes)})


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_sink")
    parser.add_argument("--port", type=int, required=True)
    ns = parser.parse_args(argv)
    app = web.Application()
    app[_RECEIVED] = []
    app.router.add_post("/v1/traces", _traces)
    app.router.add_get("/count", _count)
    app.router.add_get("/healthz", _healthz)
    web.run_app(app, host="127.0.0.1", port=ns.port, print=None)


if __name__ == "__main__":
    main()
