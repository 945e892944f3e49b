"""Outputs: the files, figures, tables, pages and events made from a run's aggregates.

May import `monitor.aggregates`, never `monitor.ingest`; `render/` holds the figure and table builders,
`report/` the HTML pages."""
