"""Micro-benchmark: what token counting and the stop/max_tokens cutter cost, in microseconds.

Times, best of ``--repeat`` (timeit): counting 1,000 tokens of English-like text with the
gateway's verified ``cl100k_base``; a prompt of three messages; and, per upstream fragment of
about 5 tokens, the cutter with neither ``stop`` nor ``max_tokens`` (every request pays it),
with one stop sequence, and with ``max_tokens`` (an exact running count). Loading the
encoding (once per process, at start-up) is timed once.

Run: ``python -m bench.token_count`` (``--json`` for machine output).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import timeit
from collections.abc import Sequence
from typing import Any, Final

from gateway.cutter import Cutter
from gateway.tokens import TokenCounter, load_cl100k

TEXT: Final = " the quick brown fox jumps over the lazy dog, lorem ipsum dolor sit amet." * 60
FRAGMENTS: Final = tuple(TEXT[i : i + 24] for i in range(0, len(TEXT), 24))


def _answer(counter: TokenCounter, **options: Any) -> None:
    cutter = Cutter(counter=counter, **options)
    for fragment in FRAGMENTS:
        cutter.feed(fragment)
        if cutter.finish_reason is not None:
            return
    cutter.end()


def measure(*, number: int, repeat: int) -> dict[str, Any]:
    """Microseconds per 1,000 tokens counted, per prompt, and per fragment through each cutter."""
    started = time.perf_counter()
    counter = TokenCounter(load_cl100k())
    load_seconds = time.perf_counter() - started
    tokens = counter.count(TEXT)
    messages = [("system", "You are terse."), ("user", TEXT[:400]), ("assistant", TEXT[:200])]

    def best(call: Any) -> float:
        return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6

    fragments = len(FRAGMENTS)
    limit = tokens + 10  # never reached: the whole answer is counted as it passes
    return {
        "load_seconds": load_seconds,
        "count_us_per_1000_tokens": best(lambda: counter.count(TEXT)) * 1000 / tokens,
        "prompt_of_3_messages_us": best(lambda: counter.prompt(messages)),
        "cutter_plain_us_per_fragment": best(lambda: _answer(counter)) / fragments,
        "cutter_stop_us_per_fragment": best(lambda: _answer(counter, stops=("END OF ANSWER",))) / fragments,
        "cutter_max_tokens_us_per_fragment": best(lambda: _answer(counter, limit=limit)) / fragments,
        "tokens_per_fragment": tokens / fragments,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print the measurements as a sentence, or as JSON with ``--json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.token_count", description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    ns = parser.parse_args(argv)
    result = measure(number=ns.number, repeat=ns.repeat)
    if ns.json:
        print(json.dumps(result))
    else:
        print(
            f"token counting: {result['count_us_per_1000_tokens']:.0f} µs per 1,000 tokens; cutter per fragment: "
            f"{result['cutter_plain_us_per_fragment']:.2f} µs plain, {result['cutter_stop_us_per_fragment']:.2f} µs "
            f"with stop, {result['cutter_max_tokens_us_per_fragment']:.2f} µs with max_tokens; "
            f"encoding loaded in {result['load_seconds']:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
