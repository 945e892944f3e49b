"""What is known about a run beyond its counts: per-sample state (ids, names, history)."""
