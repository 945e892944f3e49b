"""The one driver of serve, watch and replay, with a source made up here: what it hands over is
what the pipeline, stats.json and the stop see."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest
from rich.console import Console

from monitor.driver import Settings, Source, drive
from monitor.ingest.intake import Intake
from monitor.ingest.logbook import LogBook
from monitor.outputs.summary import STATS_FILE
from trainer_side.msglog import iter_frames

FIXTURE_LOG = Path(__file__).parent / "data" / "tiny_run.mlog"


class Frames(Source):
    """Hands over a list of frames, `per_feed` at a time; asks for a stop after `stop_after` feeds."""

    live = False

    def __init__(self, out: Path, frames: list[bytes], per_feed: int, stop_after: int | None = None) -> None:
        super().__init__(Intake(LogBook(out, fresh=True)))
        self.frames, self.per_feed, self.stop_after = frames, per_feed, stop_after
        self.feeds, self.stopped_with, self.closed = 0, None, False

    def feed(self, pipeline, until, stop) -> bool:  # type: ignore[no-untyped-def]
        self.feeds += 1
        for frame in self.frames[:self.per_feed]:
            message = self.intake.accept(frame)
            if message is not None:
                pipeline.handle(message, len(frame))
        del self.frames[:self.per_feed]
        if self.stop_after is not None and self.feeds == self.stop_after:
            stop.set()
        return bool(self.frames)

    def stop(self, pipeline, requested_at) -> int:  # type: ignore[no-untyped-def]
        self.stopped_with = requested_at
        return len(self.frames)  # what was taken but not handed over

    def close(self) -> None:
        self.closed = True
        super().close()


@pytest.mark.slow
def test_a_finite_source_is_read_through_and_every_frame_counted_in_stats(tmp_path):
    frames = list(iter_frames(FIXTURE_LOG))
    source = Frames(tmp_path, list(frames), per_feed=7)
    outcome = drive(source, tmp_path, Console(file=io.StringIO()), settings=Settings(show_tables=False))
    assert source.feeds == -(-len(frames) // 7) and source.closed and source.stopped_with is None
    stats = json.loads((tmp_path / STATS_FILE).read_text())
    assert stats["frames"] == len(frames) and stats["bytes"] == sum(map(len, frames))
    assert stats["runs"] == {"tiny-fixture": "completed"} and list(outcome.pipeline.runs) == ["tiny-fixture"]
    assert (outcome.unprocessed, outcome.abandoned, outcome.not_logged) == (0, 0, 0)
    assert list(iter_frames(tmp_path / "tiny-fixture" / "messages.mlog")) == frames


@pytest.mark.slow
def test_a_stop_ends_the_feeds_and_the_source_says_what_it_left(tmp_path):
    frames = list(iter_frames(FIXTURE_LOG))
    stop = threading.Event()
    source = Frames(tmp_path, list(frames), per_feed=5, stop_after=2)
    outcome = drive(source, tmp_path, Console(file=io.StringIO()), settings=Settings(show_tables=False), stop=stop)
    assert source.feeds == 2 and source.stopped_with is not None and source.closed
    assert outcome.unprocessed == len(frames) - 10
    assert json.loads((tmp_path / STATS_FILE).read_text())["frames"] == 10
