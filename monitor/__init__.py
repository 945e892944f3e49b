"""The monitor process: receives what trainers emit, logs it, aggregates it and renders every artifact."""
