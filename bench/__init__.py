"""Benchmarks: the gateway against direct and a bare proxy, in one run."""
