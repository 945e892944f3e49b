"""What the monitor knows about a run: its state, confusion counts, calibration bins, per-class analysis.

Pure state and arithmetic: imports neither `monitor.ingest` nor `monitor.outputs`."""
