"""Ingest: frames from the socket or a log, queued, decoded, logged, counted when refused, bounded by quotas.

Imports nothing else of `monitor` (only `trainer_side.protocol` and `monitor.folders`)."""
