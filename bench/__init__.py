"""Benchmarks of the sidecar monitor (see BENCHMARKS.md); run `python -m bench.run_all`."""
