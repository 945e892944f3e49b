"""Static HTML pages of the runs: `<out>/<run>/index.html` and `<out>/index.html`, offline and self-contained."""
