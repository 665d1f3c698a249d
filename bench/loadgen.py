"""The load generator: an asyncio client in its own process, driven by JSON lines on stdin.

Each line on stdin is a job; each job answers with one JSON line on stdout. Jobs:

* ``{"op": "requests", "url", "protocol", "stream", "concurrency", "duration", "warmup"}``:
  a closed loop of ``concurrency`` workers on one shared keep-alive connector. Latency is
  request sent to last byte; for streams also the time to the first text fragment (TTFT).
* ``{"op": "hold", "url", "protocol", "streams", "ramp", "pid", "timeout"}``: open that many
  streams (started evenly over ``ramp`` seconds), wait until every one has its first text,
  sample the RSS of process ``pid`` while all are open, then read them to the end.
* ``{"op": "quit"}``.

``protocol`` is ``openai`` (the proxy and the gateway) or ``flowgpt`` (the simulator, signed
with headers made once per job: the simulator accepts a timestamp for 300 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import orjson

from gateway.flowgpt.protocol import ANONYMOUS_TOKEN, DEFAULT_MODEL, Message, build_body, signed_headers
from gateway.openai_schema import chat_request_body
from gateway.simulator.answers import expected_answer

MODEL: Final = DEFAULT_MODEL
QUESTION: Final = "Hello, how are you today?"
EXPECTED: Final = expected_answer(MODEL, QUESTION)
# Where the first text fragment shows; the SSE role chunk has "content":"" and does not count.
FLOWGPT_TEXT: Final = b'"event":"text"'
SSE_TEXT: Final = b'"delta":{"content":"'
JSON_TEXT: Final = b'"message":{"role":"assistant","content":"'
SSE_DONE: Final = b"data: [DONE]\n\n"
_TAIL: Final = 32  # bytes kept from the previous read so a marker split across reads is found


def request_for(protocol: str, stream: bool) -> tuple[bytes, dict[str, str]]:
    """Body and headers of the benchmark's one question in ``protocol``."""
    if protocol == "flowgpt":
        body = build_body(MODEL, [Message(role="user", content=QUESTION)])
        return orjson.dumps(body), signed_headers(ANONYMOUS_TOKEN)
    return orjson.dumps(chat_request_body(QUESTION, stream=stream, model=MODEL)), {"Content-Type": "application/json"}


def answer_text(protocol: str, body: bytes) -> str:
    """The answer in a whole response body (used to check the first response of each job)."""
    if protocol == "flowgpt":
        events = [orjson.loads(line) for line in body.splitlines() if line.strip()]
        return "".join(e["data"] for e in events if isinstance(e, dict) and e.get("event") == "text")
    if body.startswith(b"data: "):
        parts = [orjson.loads(line[6:]) for line in body.split(b"\n\n") if line.startswith(b"data: {")]
        return "".join(p["choices"][0]["delta"].get("content", "") for p in parts)
    return str(orjson.loads(body)["choices"][0]["message"]["content"])


def text_marker(protocol: str, stream: bool) -> bytes:
    """Bytes that show the first text fragment has arrived."""
    if protocol == "flowgpt":
        return FLOWGPT_TEXT
    return SSE_TEXT if stream else JSON_TEXT


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max by nearest rank (empty input gives zeros)."""
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    last = len(ordered) - 1

    def rank(q: float) -> float:
        return ordered[min(last, round(q * last))]

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": ordered[-1]}


@dataclass
class Outcome:
    """What one request produced; times in seconds from its start."""

    ok: bool
    total: float
    ttft: float | None = None
    body: bytes = b""


@dataclass
class Tally:
    """Latencies of the requests that fell inside the measured window."""

    latency: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    errors: int = 0
    all_requests: int = 0
    checked: bool = False
    error_samples: list[str] = field(default_factory=list)


async def one_request(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    marker: bytes,
    *,
    sse: bool,
    keep_body: bool,
    expect_status: int = 200,
    first_text: asyncio.Event | None = None,
) -> Outcome:
    """Send one request and read the whole answer, noting the time of the first text."""
    started = time.perf_counter()
    ttft: float | None = None
    kept = bytearray()
    tail = b""
    async with session.post(url, data=body, headers=headers) as response:
        async for chunk in response.content.iter_any():
            if ttft is None and marker in tail + chunk:
                ttft = time.perf_counter() - started
                if first_text is not None:
                    first_text.set()
            if keep_body:
                kept += chunk
            tail = (tail + chunk)[-_TAIL:]
        if expect_status != 200:  # refusals: the status is the answer
            return Outcome(response.status == expect_status, time.perf_counter() - started)
        ok = response.status == 200 and ttft is not None and (not sse or tail.endswith(SSE_DONE))
    return Outcome(ok, time.perf_counter() - started, ttft, bytes(kept))


async def run_requests(job: dict[str, Any]) -> dict[str, Any]:
    """A closed loop: ``concurrency`` workers send back-to-back requests for warmup + duration."""
    protocol, stream, url = job["protocol"], bool(job["stream"]), job["url"]
    concurrency, warmup, duration = int(job["concurrency"]), float(job["warmup"]), float(job["duration"])
    expect_status = int(job.get("expect_status", 200))
    body, headers = request_for(protocol, stream)
    marker = text_marker(protocol, stream)
    sse = stream and protocol == "openai"
    tally = Tally()
    loop_start = time.perf_counter()
    measure_from = loop_start + warmup
    measure_until = measure_from + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            started = time.perf_counter()
            if started >= measure_until:
                return
            check = not tally.checked and started >= measure_from
            try:
                outcome = await one_request(
                    session, url, body, headers, marker, sse=sse, keep_body=check, expect_status=expect_status
                )
            except (aiohttp.ClientError, OSError) as exc:
                outcome = Outcome(False, time.perf_counter() - started)
                if len(tally.error_samples) < 3:
                    tally.error_samples.append(repr(exc))
            tally.all_requests += outcome.ok
            if check and outcome.ok and expect_status == 200:
                tally.checked = True
                text = answer_text(protocol, outcome.body)
                if text != EXPECTED:
                    raise RuntimeError(f"wrong answer from {url}: {text!r}")
            if started < measure_from or started + outcome.total > measure_until:
                continue
            if not outcome.ok:
                tally.errors += 1
                continue
            tally.latency.append(outcome.total)
            if stream and outcome.ttft is not None:
                tally.ttft.append(outcome.ttft)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    done = len(tally.latency)
    result: dict[str, Any] = {
        "requests": done,
        "all_requests": tally.all_requests,
        "wall_seconds": time.perf_counter() - loop_start,
        "errors": tally.errors,
        "error_samples": tally.error_samples,
        "seconds": duration,
        "rps": done / duration,
        "latency_ms": {k: v * 1000 for k, v in percentiles(tally.latency).items()},
    }
    if stream:
        result["ttft_ms"] = {k: v * 1000 for k, v in percentiles(tally.ttft).items()}
    return result


def read_status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM), 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


async def run_hold(job: dict[str, Any]) -> dict[str, Any]:
    """Open ``streams`` streams at once and sample the server's RSS while all are open."""
    protocol, url, count, pid = job["protocol"], job["url"], int(job["streams"]), int(job["pid"])
    ramp, timeout = float(job["ramp"]), float(job["timeout"])
    body, headers = request_for(protocol, True)
    marker = text_marker(protocol, True)
    sse = protocol == "openai"
    idle_kb = read_status_kb(pid, "VmRSS")
    first_texts = [asyncio.Event() for _ in range(count)]
    finished = 0
    errors: list[str] = []

    async def one(session: aiohttp.ClientSession, index: int) -> bool:
        nonlocal finished
        await asyncio.sleep(ramp * index / count)
        try:
            outcome = await one_request(
                session, url, body, headers, marker, sse=sse, keep_body=False, first_text=first_texts[index]
            )
        except (aiohttp.ClientError, OSError) as exc:
            errors.append(repr(exc))
            return False
        finally:
            finished += 1
        return outcome.ok

    samples: list[int] = []
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        tasks = [asyncio.create_task(one(session, i)) for i in range(count)]
        all_open = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(event.wait() for event in first_texts))
                all_open = True
        open_seconds = time.perf_counter() - started
        # Sample while every stream is still open (none has finished yet).
        while all_open and finished == 0:
            samples.append(read_status_kb(pid, "VmRSS"))
            if len(samples) >= 20:
                break
            await asyncio.sleep(0.05)
        results = await asyncio.gather(*tasks)
    ok = sum(results)
    return {
        "streams": count,
        "all_open": all_open,
        "open_seconds": open_seconds,
        "completed_ok": ok,
        "errors": count - ok,
        "error_samples": errors[:3],
        "rss_idle_mb": idle_kb / 1024,
        "rss_open_mb": max(samples, default=0) / 1024,
        "rss_samples": len(samples),
        "rss_hwm_mb": read_status_kb(pid, "VmHWM") / 1024,
    }


async def serve() -> None:
    """Run jobs from stdin until ``quit`` or EOF."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.strip():
            return
        job = orjson.loads(line)
        if job["op"] == "quit":
            return
        try:
            result = await (run_hold(job) if job["op"] == "hold" else run_requests(job))
        except Exception as exc:  # reported to the orchestrator, which stops the run
            result = {"fatal": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        sys.stdout.flush()


def main() -> int:
    """Entry point: ``python -m bench.loadgen`` (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
