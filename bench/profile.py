"""Sample a running server with py-spy and rank where its CPU time goes.

py-spy writes collapsed stacks (``frame;frame;frame count``, one line per distinct stack;
speedscope.app opens the file as is). The summary ranks functions by self time and by
inclusive time, and source files by self time.

Run on its own: ``python -m bench.profile STACKS_FILE`` prints the summary of a recording.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

_LINE_NUMBER: Final = re.compile(r":\d+\)$")
_FILE: Final = re.compile(r"\((.*?)(?::\d+)?\)$")
_SITE_PACKAGES: Final = re.compile(r".*/(site-packages|lib/python3\.\d+)/")


def py_spy_path() -> str | None:
    """The py-spy binary next to this interpreter or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_recording(
    pid: int, out: Path, *, seconds: float, rate: int = 200, native: bool = False
) -> subprocess.Popen[bytes]:
    """Start py-spy on ``pid`` for ``seconds``; wait for the returned process."""
    binary = py_spy_path()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy into the venv)")
    argv = [binary, "record", "--pid", str(pid), "--duration", str(round(seconds)), "--rate", str(rate)]
    argv += ["--format", "raw", "--output", str(out)]
    # Blocking sampling (py-spy's default) pauses the process for each sample: about 1% at
    # 200 Hz, and unlike --nonblocking it never records torn stacks.
    if native:
        argv.append("--native")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py relative to site-packages or the repo)``."""
    frame = _LINE_NUMBER.sub(")", frame)
    return _SITE_PACKAGES.sub("", frame.replace(str(Path.cwd()) + "/", ""))


def _file(frame: str) -> str:
    match = _FILE.search(_short(frame))
    return match.group(1) if match else frame


def summarize(path: Path, *, top: int = 25) -> dict[str, Any]:
    """Self and inclusive time per function, self time per file, as percentages of all samples."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        by_file[_file(stack.split(";")[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count

    def ranked(counter: Counter[str], key: str) -> list[dict[str, Any]]:
        return [
            {key: name, "self_pct" if counter is not inclusive else "incl_pct": 100 * n / total}
            for name, n in counter.most_common(top)
        ]

    if total == 0:
        return {"samples": 0, "top_self": [], "top_inclusive": [], "self_by_file": []}
    return {
        "samples": total,
        "top_self": ranked(self_time, "frame"),
        "top_inclusive": ranked(inclusive, "frame"),
        "self_by_file": ranked(by_file, "file"),
    }


def format_summary(data: dict[str, Any]) -> str:
    """The summary as text."""
    lines = [f"{data['samples']} samples"]
    for title, key, pct in (
        ("self time by function", "top_self", "self_pct"),
        ("inclusive time by function", "top_inclusive", "incl_pct"),
        ("self time by file", "self_by_file", "self_pct"),
    ):
        lines += ["", title]
        lines += [f"  {item[pct]:5.1f}%  {item.get('frame') or item.get('file')}" for item in data[key]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Summarize a recording."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("stacks", type=Path, help="a py-spy --format raw recording")
    parser.add_argument("--top", type=int, default=25)
    ns = parser.parse_args(argv)
    print(format_summary(summarize(ns.stacks, top=ns.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
