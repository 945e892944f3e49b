"""What the monitor knows about a run, aggregated from its messages: per-sample state and statistics."""
