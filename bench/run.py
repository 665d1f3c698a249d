"""The benchmark run: direct vs bare proxy vs gateway, on one machine, in one run.

Every party is its own OS process: the FlowGpt simulator (zero-delay mode), the bare
proxy (``bench.bare_proxy``), the gateway (``python -m gateway serve``, metrics, breaker
and probe on), and the load generators (``wrk`` for non-streaming, ``bench.loadgen`` for
streaming, memory and as a fallback). See docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from bench import report
from bench.check import main_check
from bench.fleet import run_fleet
from bench.harness import post_json
from bench.loadgen import request_for
from bench.profile import format_summary, py_spy_path, start_recording, summarize
from bench.tracing import run_tracing
from bench.wrk import run_wrk, write_script, wrk_path
from gateway.flowgpt.protocol import UPSTREAM_PATH
from gateway.simulator.routes import route_path
from monitoring.processes import PYTHON, clean_env, compress_large_log, free_port
from monitoring.processes import ManagedProcess as Proc

REPO_DIR: Final = Path(__file__).resolve().parent.parent
RESULTS_DIR: Final = REPO_DIR / "bench" / "results"
ADMIN_TOKEN: Final = "bench-admin-token"  # a loopback-only throwaway
SIM_CHUNKS: Final = 8


class LoadGen:
    """The asyncio load generator process, one JSON job per line."""

    def __init__(self, log_dir: Path) -> None:
        self.proc = Proc("loadgen", [PYTHON, "-m", "bench.loadgen"], log_dir, env=clean_env(), pipe_stdio=True)

    def job(self, **job: Any) -> dict[str, Any]:
        """Run one job and return its result; raise if the generator reported a fatal error."""
        stdin, stdout = self.proc.popen.stdin, self.proc.popen.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(orjson.dumps(job).decode() + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"load generator died; see {self.proc.log_path}")
        result: dict[str, Any] = json.loads(line)
        if "fatal" in result:
            raise RuntimeError(f"load generator: {result['fatal']}")
        return result

    def stop(self) -> None:
        """Ask it to quit, then make sure."""
        stdin = self.proc.popen.stdin
        if stdin is not None and self.proc.popen.poll() is None:
            stdin.write('{"op": "quit"}\n')
            stdin.flush()
        self.proc.stop()


class Bench:
    """One run: its options, processes and records."""

    def __init__(self, ns: argparse.Namespace, run_dir: Path) -> None:
        self.ns = ns
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True)
        self.procs: list[Proc] = []
        self.records: list[dict[str, Any]] = []
        self.use_wrk = ns.loadgen == "wrk"
        self.loadgen = LoadGen(self.logs)
        try:
            self.sim = self._start_sim("sim", chunk_delay=0.0, chunks=SIM_CHUNKS)
            self.proxy = self._start_proxy("bare_proxy", self.sim_url(self.sim))
            self.gateway = self._start_gateway("gateway", self.sim_url(self.sim), max_concurrency=None)
        except BaseException:
            self.close()
            raise
        self.urls = {
            "direct": self.sim_url(self.sim),
            "bare": self.proxy_url(self.proxy),
            "gateway": self.proxy_url(self.gateway),
        }
        self.servers = {"direct": self.sim, "bare": self.proxy, "gateway": self.gateway}
        self.openai_script = write_script(run_dir / "openai.lua", *request_for("openai", False))

    # -- processes -----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], port: int, cwd: Path | None = None) -> Proc:
        proc = Proc(name, argv, self.logs, env=env, port=port, cwd=cwd)
        self.procs.append(proc)
        return proc

    @staticmethod
    def sim_url(proc: Proc) -> str:
        """The simulator's chat endpoint."""
        return f"http://127.0.0.1:{proc.port}{UPSTREAM_PATH}"

    @staticmethod
    def proxy_url(proc: Proc) -> str:
        """The OpenAI endpoint of the bare proxy or the gateway."""
        return f"http://127.0.0.1:{proc.port}/v1/chat/completions"

    def _start_sim(self, name: str, *, chunk_delay: float, chunks: int) -> Proc:
        port = free_port()
        argv = [PYTHON, "-m", "gateway", "sim", "--port", str(port), "--chunks", str(chunks)]
        proc = self._spawn(name, [*argv, "--chunk-delay", str(chunk_delay)], clean_env(), port)
        proc.wait_http(f"http://127.0.0.1:{port}/_sim/healthz")
        return proc

    def _start_proxy(self, name: str, upstream: str) -> Proc:
        port = free_port()
        argv = [PYTHON, "-m", "bench.bare_proxy", "--port", str(port), "--upstream", upstream]
        if not self.ns.uvloop:
            argv.append("--no-uvloop")
        env, cwd = clean_env(), None
        if self.ns.gateway_src is not None:
            # The floor uses the same protocol helpers (signing, body) as the gateway under test.
            env["PYTHONPATH"], cwd = str(REPO_DIR), self.ns.gateway_src
        proc = self._spawn(name, argv, env, port, cwd=cwd)
        proc.wait_http(f"http://127.0.0.1:{port}/healthz")
        return proc

    def _start_gateway(
        self,
        name: str,
        upstream: str,
        *,
        max_concurrency: int | None,
        upstreams: str | None = None,
        extra_env: dict[str, str] | None = None,
        workers: int = 1,
    ) -> Proc:
        port = free_port()
        env = clean_env(
            GATEWAY_HOST="127.0.0.1",
            GATEWAY_PORT=str(port),
            GATEWAY_UPSTREAM_URL=upstream,
            GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN,
            GATEWAY_PROBE_ENABLED="true",
            GATEWAY_LOG_LEVEL=self.ns.gateway_log_level,
            GATEWAY_UVLOOP="true" if self.ns.uvloop else "false",
        )
        if max_concurrency is not None:
            env["GATEWAY_MAX_CONCURRENCY"] = str(max_concurrency)
        if upstreams is not None:
            del env["GATEWAY_UPSTREAM_URL"]  # the routes replace the single upstream
            env["GATEWAY_UPSTREAMS"] = upstreams
        env.update(extra_env or {})
        argv = [PYTHON, "-m", "gateway", "serve", *(["--workers", str(workers)] if workers > 1 else [])]
        # ``-m`` puts the working directory first on sys.path: --gateway-src runs another checkout.
        proc = self._spawn(name, argv, env, port, cwd=self.ns.gateway_src)
        proc.wait_http(f"http://127.0.0.1:{port}/readyz")
        return proc

    def start_gateway_from(self, src: Path, name: str) -> Proc:
        """A gateway (as the main one) running the package found in ``src`` (``--check``'s baseline)."""
        saved, self.ns.gateway_src = self.ns.gateway_src, src
        try:
            return self._start_gateway(name, self.sim_url(self.sim), max_concurrency=None)
        finally:
            self.ns.gateway_src = saved

    def run_load(self, target: str, concurrency: int, duration: float, *, stream: bool) -> dict[str, Any]:
        """One load run against ``target`` (no accounting: wrap it in :meth:`measure`)."""
        if stream:
            return self._stream(target, concurrency, duration)
        return self._nonstream(target, concurrency, duration)

    def close(self) -> None:
        """Stop every process this run started."""
        self.loadgen.stop()
        for proc in reversed(self.procs):
            proc.stop()
            compress_large_log(proc.log_path)

    # -- measurements --------------------------------------------------------------------------

    def _protocol(self, target: str) -> str:
        return "flowgpt" if target == "direct" else "openai"

    def _nonstream(self, target: str, concurrency: int, duration: float, *, expect_status: int = 200) -> dict[str, Any]:
        url, protocol = self.urls[target], self._protocol(target)
        if self.use_wrk:
            # Signed headers are made per run: the simulator accepts a timestamp for 300 s.
            script = self.openai_script
            if protocol == "flowgpt":
                script = write_script(self.run_dir / "direct.lua", *request_for("flowgpt", False))
            return run_wrk(url, script, connections=concurrency, duration=duration, expect_status=expect_status)
        return self.loadgen.job(
            op="requests",
            url=url,
            protocol=protocol,
            stream=False,
            concurrency=concurrency,
            duration=duration,
            warmup=min(0.5, duration / 4),
            expect_status=expect_status,
        )

    def _stream(self, target: str, concurrency: int, duration: float) -> dict[str, Any]:
        return self.loadgen.job(
            op="requests",
            url=self.urls[target],
            protocol=self._protocol(target),
            stream=True,
            concurrency=concurrency,
            duration=duration,
            warmup=min(0.5, duration / 4),
        )

    def measure(self, scenario: str, target: str, rep: int, run: Any) -> dict[str, Any]:
        """Run one measurement with CPU accounting of the server under test and the simulator."""
        server = self.servers[target]
        cpu_server, cpu_sim, started = server.cpu_seconds(), self.sim.cpu_seconds(), time.monotonic()
        result: dict[str, Any] = run()
        wall = time.monotonic() - started
        count = max(1, result["all_requests"])
        server_cpu = server.cpu_seconds() - cpu_server
        result["cpu"] = {
            "server_us_per_req": server_cpu / count * 1e6,
            "server_util": server_cpu / wall,
            "sim_us_per_req": (self.sim.cpu_seconds() - cpu_sim) / count * 1e6,
        }
        record = {"scenario": scenario, "target": target, "rep": rep, "result": result}
        self.records.append(record)
        errors = f", {result['errors']} ERRORS {result.get('error_samples', '')}" if result["errors"] else ""
        print(
            f"  {scenario:<14} {report.LABELS[target]:<11} rep {rep + 1}: {result['rps']:8.0f}/s  "
            f"p50 {result['latency_ms']['p50']:7.3f} ms  p99 {result['latency_ms']['p99']:7.3f} ms{errors}",
            flush=True,
        )
        return record

    def warm_up(self) -> None:
        """Fill connection pools and caches of every target before anything is measured."""
        print("warming up", flush=True)
        for target in report.TARGETS:
            self._nonstream(target, 16, self.ns.warmup)
            self._stream(target, 4, self.ns.warmup)

    def main_scenarios(self) -> None:
        """Non-streaming at c=1/16/64 and streaming at c=1/16, targets interleaved per repetition."""
        for rep in range(self.ns.reps):
            order = report.TARGETS[rep % 3 :] + report.TARGETS[: rep % 3]
            print(f"repetition {rep + 1}/{self.ns.reps} (order: {', '.join(order)})", flush=True)
            for scenarios, run in ((report.NONSTREAM, self._nonstream), (report.STREAM, self._stream)):
                for scenario, concurrency in scenarios:
                    for target in order:
                        self.measure(
                            scenario,
                            target,
                            rep,
                            lambda t=target, c=concurrency, r=run: r(t, c, self.ns.duration),
                        )

    def routes(self) -> dict[str, Any]:
        """Non-streaming c=1 through a gateway with 1 route and one with 8, paired per repetition.

        Both use the simulator's route paths (``/r/<name>/...``), so only the route pool differs.
        """
        print("routes: non-streaming c=1, gateway with 1 route vs 8 routes", flush=True)
        sim_base = f"http://127.0.0.1:{self.sim.port}"

        def routes_json(count: int) -> str:
            routes = [{"name": f"r{i}", "url": sim_base + route_path(f"r{i}")} for i in range(count)]
            return orjson.dumps(routes).decode()

        for target, count in (("gateway1", 1), ("gateway8", 8)):
            server = self._start_gateway(
                f"gateway_{count}_routes", self.sim_url(self.sim), max_concurrency=None, upstreams=routes_json(count)
            )
            self.urls[target], self.servers[target] = self.proxy_url(server), server
            self._nonstream(target, 16, self.ns.warmup)
        p50: dict[str, list[float]] = {"gateway1": [], "gateway8": []}
        for rep in range(max(self.ns.reps, 3)):
            for target in ("gateway1", "gateway8") if rep % 2 == 0 else ("gateway8", "gateway1"):
                record = self.measure(
                    "routes_c1", target, rep, lambda t=target: self._nonstream(t, 1, self.ns.duration)
                )
                p50[target].append(record["result"]["latency_ms"]["p50"])
        added = statistics.median(b - a for a, b in zip(p50["gateway1"], p50["gateway8"], strict=True))
        return {
            "p50_ms": {target: statistics.median(values) for target, values in p50.items()},
            "added_p50_ms": added,
        }

    def breaker_open(self) -> list[dict[str, Any]]:
        """Force the gateway's breaker open, then hammer it: every answer must be a 503 refusal."""
        print(f"breaker open: gateway, c={self.ns.breaker_concurrency}", flush=True)
        base = self.urls["gateway"].rsplit("/v1/", 1)[0]
        status, body = post_json(f"{base}/admin/breaker", b'{"mode": "open"}', token=ADMIN_TOKEN)
        if status != 200:
            raise RuntimeError(f"cannot force the breaker open: {status} {body!r}")
        probe_status, probe_body = post_json(self.urls["gateway"], request_for("openai", False)[0])
        if probe_status != 503 or b"circuit_open" not in probe_body:
            raise RuntimeError(f"breaker forced open but a request got {probe_status} {probe_body[:200]!r}")
        concurrency = self.ns.breaker_concurrency
        try:
            return [
                self.measure(
                    "breaker_open",
                    "gateway",
                    rep,
                    lambda: self._nonstream("gateway", concurrency, self.ns.duration, expect_status=503),
                )["result"]
                for rep in range(self.ns.reps)
            ]
        finally:
            post_json(f"{base}/admin/breaker", b'{"mode": "auto"}', token=ADMIN_TOKEN)

    def memory(self) -> dict[str, Any]:
        """N streams held open at once through a fresh gateway and a fresh bare proxy; RSS sampled."""
        streams, delay, chunks = self.ns.streams, self.ns.stream_chunk_delay, self.ns.stream_chunks
        print(f"memory: {streams} concurrent streams ({chunks} chunks, {delay:g} s apart)", flush=True)
        sim = self._start_sim("sim_paced", chunk_delay=delay, chunks=chunks)
        out: dict[str, Any] = {}
        try:
            for target in ("gateway", "bare"):
                if target == "gateway":
                    server = self._start_gateway("gateway_streams", self.sim_url(sim), max_concurrency=streams + 100)
                else:
                    server = self._start_proxy("bare_proxy_streams", self.sim_url(sim))
                try:
                    result = self.loadgen.job(
                        op="hold",
                        url=self.proxy_url(server),
                        protocol="openai",
                        streams=streams,
                        ramp=self.ns.ramp,
                        pid=server.pid,
                        timeout=chunks * delay + 60,
                    )
                finally:
                    server.stop()
                out[target] = result
                print(
                    f"  {report.LABELS[target]:<11} idle {result['rss_idle_mb']:.1f} MB, all open "
                    f"{result['rss_open_mb']:.1f} MB, peak {result['rss_hwm_mb']:.1f} MB, "
                    f"{result['completed_ok']}/{streams} ok, opened in {result['open_seconds']:.1f} s",
                    flush=True,
                )
        finally:
            sim.stop()
        return out

    def micro(self, title: str, module: str, number: int) -> dict[str, Any]:
        """One micro-benchmark module (``--json --number N``), in its own process."""
        print(f"{title} micro-benchmark", flush=True)
        completed = subprocess.run(
            [PYTHON, "-m", module, "--json", "--number", str(number)],
            capture_output=True,
            text=True,
            check=True,
            env=clean_env(),
        )
        data: dict[str, Any] = json.loads(completed.stdout)
        return data

    def profile(self) -> dict[str, Any]:
        """py-spy on the gateway while wrk drives it at c=64 (non-streaming)."""
        seconds = self.ns.profile_seconds
        out = self.run_dir / "profile-gateway-c64.txt"
        print(f"profiling the gateway for {seconds:g} s under c=64 (py-spy, collapsed stacks: {out})", flush=True)
        recorder = start_recording(self.gateway.pid, out, seconds=seconds, native=self.ns.profile_native)
        time.sleep(0.5)
        self._nonstream("gateway", 64, seconds)
        _, err = recorder.communicate(timeout=seconds + 60)
        if recorder.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        data = summarize(out)
        (self.run_dir / "profile-summary.txt").write_text(format_summary(data) + "\n", encoding="utf-8")
        return {"path": str(out), **data}


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gateway"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Options; ``--quick`` shortens everything."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, short runs (about a minute)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; --quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 3; --quick 1)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per target (default 1; --quick 0.5)")
    parser.add_argument("--loadgen", choices=["wrk", "python"], help="non-streaming load generator (default wrk)")
    parser.add_argument("--breaker-concurrency", type=int, default=16, help="connections hammering the open breaker")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams of the memory scenario")
    parser.add_argument("--stream-chunks", type=int, default=16, help="chunks per stream in the memory scenario")
    parser.add_argument("--stream-chunk-delay", type=float, help="seconds between chunks there (default 0.5)")
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds over which the streams are opened")
    parser.add_argument("--gateway-log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--gateway-src", type=Path, help="run the gateway package found in this directory (A/B a change)"
    )
    parser.add_argument("--no-uvloop", dest="uvloop", action="store_false", help="asyncio loop in proxy and gateway")
    sections = ["main", "breaker", "routes", "fleet", "tracing", "memory", "micro"]
    parser.add_argument("--skip", action="append", default=[], choices=sections)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--profile", action="store_true", help="also profile the gateway at c=64 with py-spy")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--check", action="store_true", help="only the CPU-ratio check (see bench/check.py)")
    parser.add_argument(
        "--max-ratio",
        type=float,
        help="--check fails above this CPU ratio (default 2.0 x bare, 1.1 x baseline)",
    )
    ns = parser.parse_args(argv)
    # --check: the gateway is this checkout's; --gateway-src names the baseline it is compared with.
    ns.baseline_src, ns.quick = (ns.gateway_src, True) if ns.check else (None, ns.quick)
    ns.gateway_src = None if ns.check else ns.gateway_src
    ns.reps = ns.reps or (1 if ns.quick and not ns.check else 3)
    ns.duration = ns.duration or (1.0 if ns.quick else 3.0)
    ns.warmup = ns.warmup or (0.5 if ns.quick else 1.0)
    ns.stream_chunk_delay = ns.stream_chunk_delay or (0.3 if ns.quick else 0.5)
    if ns.loadgen is None:
        ns.loadgen = "wrk" if wrk_path() else "python"
        if ns.loadgen == "python":
            print("wrk not found (apt-get install wrk): using the asyncio load generator for everything")
    for attr in ("gateway_src", "baseline_src"):
        src = getattr(ns, attr)
        if src is not None:
            setattr(ns, attr, src.resolve())
            if not (src / "gateway" / "__init__.py").exists():
                parser.error(f"--gateway-src: no gateway package in {src}")
    if ns.profile and py_spy_path() is None:
        parser.error("--profile needs py-spy: .venv/bin/pip install py-spy")
    return ns


def main(argv: Sequence[str] | None = None) -> int:
    """Run everything, write the JSON, print the table and the verdicts."""
    ns = parse_args(argv)
    started = dt.datetime.now()
    run_dir = RESULTS_DIR / started.strftime("%Y%m%d-%H%M%S")
    meta = {
        "started": started.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": _commit(),
        "gateway_src": str(ns.gateway_src) if ns.gateway_src else None,
        "reps": ns.reps,
        "duration": ns.duration,
        "nonstream_tool": "wrk -t1" if ns.loadgen == "wrk" else "asyncio load generator",
        "sim_chunks": SIM_CHUNKS,
        "breaker_concurrency": ns.breaker_concurrency,
        "gateway_log_level": ns.gateway_log_level,
        "uvloop": ns.uvloop,
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    if ns.check:
        return main_check(ns, run_dir, Bench)
    print(f"benchmark run {run_dir}", flush=True)
    bench = Bench(ns, run_dir)
    summary: dict[str, Any] = {"meta": meta, "scenarios": {}}
    try:
        bench.warm_up()
        if "main" not in ns.skip:
            bench.main_scenarios()
            for scenario, _ in (*report.NONSTREAM, *report.STREAM):
                summary["scenarios"][scenario] = report.summarize_scenario(bench.records, scenario)
        if "breaker" not in ns.skip:
            summary["breaker_open"] = report.summarize_single(bench.breaker_open())
        if "routes" not in ns.skip:
            summary["routes"] = bench.routes()
        if "fleet" not in ns.skip:
            summary["fleet"] = run_fleet(bench)
        if "tracing" not in ns.skip:
            summary["tracing"] = run_tracing(bench)
        if ns.profile:
            summary["profile"] = bench.profile()
        if "memory" not in ns.skip:
            summary["memory"] = bench.memory()
        if "micro" not in ns.skip:
            quick = bench.ns.quick
            summary["metrics_overhead"] = bench.micro("metrics", "bench.metrics_overhead", 20000 if quick else 50000)
            summary["token_count"] = bench.micro("token-counting", "bench.token_count", 50 if quick else 200)
    finally:
        bench.close()
    meta["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["seconds"] = round((dt.datetime.now() - started).total_seconds(), 1)
    verdicts = report.evaluate(summary)
    path = run_dir / "results.json"
    payload = {"summary": summary, "targets": verdicts, "records": bench.records}
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    text = report.render(summary, verdicts)
    (run_dir / "table.txt").write_text(text + "\n", encoding="utf-8")
    print()
    print(text)
    print(f"\nresults: {path}  ({meta['seconds']:g} s)")
    return 1 if ns.strict and not all(v["pass"] for v in verdicts) else 0
