"""``python -m bench``: the whole benchmark in one command (see docs/benchmark.md)."""

from __future__ import annotations

import sys

from bench.run import main

sys.exit(main())
