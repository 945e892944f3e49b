"""The README's code runs as documented: its snippets, pasted into scripts, feed a real monitor."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np

from conftest import ROOT, MonitorProcess
from test_end_to_end import read_confusion_csv

README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _serve_snippet(code: str, tmp_path) -> MonitorProcess:
    """Runs a README snippet, pasted into its own script, against a live monitor; returns the stopped monitor."""
    monitor = MonitorProcess(tmp_path / "outputs")
    try:
        script = tmp_path / "snippet.py"
        script.write_text(code.replace("tcp://127.0.0.1:5555", monitor.endpoint))
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                                timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
        assert monitor.stop() == 0
    finally:
        monitor.kill()
    return monitor


def test_readme_has_the_two_commands_and_both_snippets():
    assert "make demo" in README and "make test" in README
    assert len(SNIPPETS) == 2 and "EmitterCallback" in SNIPPETS[0] and "Emitter(" in SNIPPETS[1]


def test_the_lightning_snippet_works_against_a_live_monitor(tmp_path):
    monitor = _serve_snippet(SNIPPETS[0], tmp_path)
    run = tmp_path / "outputs" / "readme-example"
    for epoch in (0, 1):
        names, counts = read_confusion_csv(run / f"epoch_{epoch:03d}" / "confusion_matrix.csv")
        assert names == ["cat", "dog", "bird"] and counts.sum() == 100
        assert (run / f"epoch_{epoch:03d}" / "sample_predictions.png").is_file()
        assert (run / f"epoch_{epoch:03d}" / "sampler_distribution.json").is_file()
    assert "Dataset Class Distribution" in (run / "console.txt").read_text()
    assert re.search(r"\d+ frames received, 0 rejected", monitor.output())


def test_the_plain_loop_snippet_works_against_a_live_monitor(tmp_path):
    _serve_snippet(SNIPPETS[1], tmp_path)
    run = tmp_path / "outputs" / "plain-loop"
    for epoch in (0, 1):
        _, counts = read_confusion_csv(run / f"epoch_{epoch:03d}" / "confusion_matrix.csv")
        assert counts.sum() == 100 and counts.shape == (3, 3)
    assert np.isfinite(float((run / "history.csv").read_text().splitlines()[1].split(",")[1]))
