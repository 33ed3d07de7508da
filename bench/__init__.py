"""Benchmarks: `make bench` runs them all; each module prints one line and exposes run() -> dict."""
