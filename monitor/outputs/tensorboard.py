"""TensorBoard events written by the monitor: each epoch's figures as images, per-class and
history metrics as scalars, in `<dir>/<run>/`, so they show beside a Lightning TensorBoardLogger's.

Layout: one TensorBoard run per monitor run, `<dir>/<run folder>/events.out.tfevents.*`, the run
folder named as under `--out` (monitor/folders.py `run_dir`). The step is the epoch number for
every event (Lightning's own scalars count global steps). Tags:

    confusion_matrix/counts ... (IMAGE_TAGS)  an epoch figure, the PNG's own bytes
    history/<metric>                          every finite metric of history.csv
    macro_avg/<m>, weighted_avg/<m>           per_class_metrics.csv's average rows, m in precision, recall, f1
    per_class/<m>/<index>_<class name>        per class, for runs with at most `max_classes` classes

One background thread does the work (reading PNGs, encoding, checksumming, appending); the pipeline
and the render pool's completion thread only queue small items. A live monitor never waits on that
queue: when it is full an item is dropped and counted (`not_written`). Each event is appended
and the file closed at once, so TensorBoard sees it without a flush. Event files hold wall times,
so unlike the artifacts under `--out` they differ from one replay to the next.

Records use TFRecord framing, as TensorBoard's `record_writer.py` states it: uint64 length,
uint32 masked CRC-32C of the length, the serialized `Event`, uint32 masked CRC-32C of the event.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import socket
import struct
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from monitor.aggregates.analysis import ClassMetricsRow

log = logging.getLogger("monitor")

INSTALL_HINT = "pip install 'lightning-sidecar-monitor[tensorboard]'"

# A figure written in an epoch folder, by file name, and its image tag; other files are not logged.
IMAGE_TAGS = {
    "confusion_matrix.png": "confusion_matrix/counts",
    "confusion_matrix_normalized.png": "confusion_matrix/normalized",
    "confusion_matrix_top.png": "confusion_matrix/most_confused",
    "reliability_diagram.png": "reliability_diagram",
    "sample_predictions.png": "samples/predictions",
    "misclassified.png": "samples/misclassified",
}
DEFAULT_MAX_CLASSES = 100
MAX_QUEUED = 1024  # items (a path, or one epoch's scalars) waiting for the writer thread
_SEEN_FIGURES = 4096  # figures remembered, so one redrawn with the same bytes is not logged again
_SEEN_STEPS = 8  # epochs per run whose scalars are remembered for the same reason
_EPOCH_FOLDER = re.compile(r"epoch_(\d+)")
_NOT_IN_TAG = re.compile(r"[^-/\w.]")  # TensorFlow's tag characters
_NOT_IN_TAG_LEVEL = re.compile(r"[^-\w.]")  # the same less '/': a class name is one tag level
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A PNG's colour type -> the channels TensorBoard's Image.colorspace counts.
_COLORSPACE = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_METRICS = ("precision", "recall", "f1")


class TensorBoardMissing(ImportError):
    """--tensorboard without the tensorboard package."""


def check_available() -> None:
    """Raises TensorBoardMissing, naming the extra to install, when tensorboard or google-crc32c cannot
    be imported."""
    try:
        import google_crc32c  # noqa: F401
        from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: F401
    except ImportError as exc:
        raise TensorBoardMissing(f"--tensorboard needs the tensorboard and google-crc32c packages ({exc}); "
                                 f"{INSTALL_HINT}") from None


@dataclass(frozen=True)
class TensorBoardOptions:
    """`--tensorboard DIR` and `--tensorboard-max-classes N`."""

    folder: Path
    max_classes: int = DEFAULT_MAX_CLASSES


def tag_part(name: str, keep_slash: bool = False) -> str:
    """`name` as one level of a tag (or several, with `keep_slash`): characters outside letters,
    digits, '-', '_' and '.' become '_'."""
    return (_NOT_IN_TAG if keep_slash else _NOT_IN_TAG_LEVEL).sub("_", name) or "_"


def class_scalars(rows: Sequence[ClassMetricsRow], max_classes: int) -> dict[str, float]:
    """The scalars of per_class_metrics.csv: the average rows always, the classes when there are at
    most `max_classes`; each class's tag starts with its zero-padded index, so tags are distinct
    and sort by index whatever the names hold."""
    classes = [row for row in rows if row.index is not None]
    scalars = {f"{tag_part(row.name)}/{m}": getattr(row, m) for row in rows if row.index is None for m in _METRICS}
    if len(classes) <= max_classes:
        width = len(str(max(len(classes) - 1, 0)))
        scalars.update({f"per_class/{m}/{row.index:0{width}d}_{tag_part(row.name)}": getattr(row, m)
                        for row in classes for m in _METRICS})
    return scalars


def history_scalars(metrics: Mapping[str, float]) -> dict[str, float]:
    """An epoch's history.csv row as `history/<metric>` scalars."""
    return {f"history/{tag_part(name, keep_slash=True)}": float(value) for name, value in metrics.items()}


def png_size(png: bytes) -> tuple[int, int, int]:
    """Width, height and TensorBoard colorspace of a PNG, from its header."""
    if len(png) < 26 or not png.startswith(_PNG_SIGNATURE) or png[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", png[16:24])
    return width, height, _COLORSPACE.get(png[25], 3)


def record(event: bytes) -> bytes:
    """One TFRecord: the framing TensorBoard's readers expect around a serialized Event."""
    length = struct.pack("<Q", len(event))
    return b"".join((length, struct.pack("<I", masked_crc32c(length)), event,
                     struct.pack("<I", masked_crc32c(event))))


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C that TFRecord framing stores (rotated right by 15 bits, plus a constant)."""
    import google_crc32c  # a C implementation: TensorBoard's own checksums one byte per Python loop turn

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TensorBoardWriter:
    """Writes each run's events under `options.folder`, from one background thread.

    `figure(path)` (any artifact under `out`; the known epoch figures are logged, each one once per
    content) and `epoch(...)` queue work; `close` writes what is queued and stops the thread.
    `wait=True` (a replay) makes them wait for room in the queue instead of dropping.
    """

    def __init__(self, options: TensorBoardOptions, out: Path, *, wait: bool = False) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self.folder = options.folder
        self.max_classes = options.max_classes
        self.out = out
        self.wait = wait
        self.dropped = 0  # items not queued (the queue was full)
        self.failed = 0  # items that could not be written (a write error, an unreadable figure)
        self._queue: queue.Queue = queue.Queue(MAX_QUEUED)
        self._queued = 0  # items put in the queue (from the pipeline's and the render pool's threads)
        self._done = 0
        self._count_lock = threading.Lock()
        self._files: dict[str, Path] = {}  # run folder -> its event file
        self._figures: OrderedDict[Path, tuple[int, int, int]] = OrderedDict()  # path -> size, mtime, crc
        self._scalars: dict[str, dict[int, dict[str, float]]] = {}  # run folder -> epoch -> what was written
        self._warned: set[str] = set()  # run folders told that they have too many classes
        self._thread = threading.Thread(target=self._work, name="monitor-tensorboard", daemon=True)
        self._thread.start()

    # --- called by the pipeline and the render pool ---------------------------------------------

    def figure(self, path: str | Path) -> None:
        """A finished artifact: when it is an epoch folder or in one, that folder's known figures are logged."""
        self._put(("figures", Path(path)))

    def epoch(self, run_folder: str, number: int, history: Mapping[str, float],
              classes: Sequence[ClassMetricsRow] | None) -> None:
        """An epoch's history metrics (finite ones) and per-class metrics (None: not computed)."""
        capped = classes is not None and sum(row.index is not None for row in classes) > self.max_classes
        if capped:  # only the averages are logged: the queue need not hold the classes
            classes = [row for row in classes if row.index is None]
        self._put(("scalars", run_folder, number, dict(history), classes, capped))

    @property
    def not_written(self) -> int:
        """Items dropped, failed, or still queued."""
        return self.dropped + self.failed + self._queued - self._done

    def close(self, deadline: float | None = None) -> int:
        """Writes what is queued, until the monotonic `deadline` at most, and stops the thread.

        Returns:
            The number of items not written (`not_written`).
        """
        while self._thread.is_alive():
            timeout = 1.0 if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                self._queue.put(None, timeout=timeout)
                break
            except queue.Full:
                continue
        self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        lost = self.not_written
        if lost:
            log.warning("tensorboard: %d figure or metric update(s) not written to %s/ (the writer fell behind, "
                        "a write failed or the stop came first); `monitor replay <out>/<run>/messages.mlog "
                        "--tensorboard NEW_DIR` writes them all", lost, self.folder)
        return lost

    def _put(self, item: tuple) -> None:
        while True:
            try:
                self._queue.put(item, block=self.wait and self._thread.is_alive(), timeout=1.0)
                with self._count_lock:
                    self._queued += 1
                return
            except queue.Full:
                if not self.wait or not self._thread.is_alive():
                    with self._count_lock:
                        self.dropped += 1
                    if self.dropped == 1:
                        log.warning("tensorboard: the event writer fell behind; events are dropped (counted "
                                    "at the end)")
                    return

    # --- the writer thread ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                events = self._figure_events(item[1]) if item[0] == "figures" else self._scalar_events(*item[1:])
                for run_folder, event in events:
                    self._append(run_folder, event)
            except Exception as exc:  # noqa: BLE001 - one bad item must not stop the writer
                self.failed += 1
                if self.failed == 1:
                    log.error("tensorboard: cannot write events to %s/ (%s: %s)", self.folder,
                              type(exc).__name__, exc)
            finally:
                self._done += 1
                self._queue.task_done()

    def _figure_events(self, path: Path) -> list[tuple[str, bytes]]:
        """Events for the known figures of the epoch folder that `path` is (or is in)."""
        try:
            parts = path.relative_to(self.out).parts
        except ValueError:
            return []
        if len(parts) not in (2, 3):
            return []
        run_folder, epoch_folder = parts[:2]
        match = _EPOCH_FOLDER.fullmatch(epoch_folder)
        if match is None:
            return []
        events = []
        for name, tag in IMAGE_TAGS.items():
            figure = self.out / run_folder / epoch_folder / name
            try:
                stat = figure.stat()
                seen = self._figures.get(figure)
                if seen is not None and seen[:2] == (stat.st_size, stat.st_mtime_ns):
                    continue
                png = figure.read_bytes()
            except FileNotFoundError:
                continue
            crc = zlib.crc32(png)
            self._figures[figure] = (stat.st_size, stat.st_mtime_ns, crc)
            self._figures.move_to_end(figure)
            while len(self._figures) > _SEEN_FIGURES:
                self._figures.popitem(last=False)
            if seen is None or seen[2] != crc:
                events.append((run_folder, self._image_event(int(match.group(1)), tag, png)))
        return events

    def _image_event(self, step: int, tag: str, png: bytes) -> bytes:
        width, height, colorspace = png_size(png)
        image = self._summary.Image(height=height, width=width, colorspace=colorspace, encoded_image_string=png)
        summary = self._summary(value=[self._summary.Value(tag=tag, image=image)])
        return self._event(wall_time=time.time(), step=step, summary=summary).SerializeToString()

    def _scalar_events(self, run_folder: str, number: int, history: dict[str, float],
                       classes: Sequence[ClassMetricsRow] | None, capped: bool) -> list[tuple[str, bytes]]:
        scalars = history_scalars(history)
        if classes is not None:
            scalars.update(class_scalars(classes, self.max_classes))
            if capped and run_folder not in self._warned:
                self._warned.add(run_folder)
                log.warning("tensorboard: run %s has more than %d classes (--tensorboard-max-classes): no "
                            "per-class scalars, only the macro and weighted averages", run_folder,
                            self.max_classes)
        steps = self._scalars.setdefault(run_folder, {})
        written = steps.setdefault(number, {})
        new = {tag: value for tag, value in scalars.items() if written.get(tag) != value}
        written.update(new)
        for old in sorted(steps)[:-_SEEN_STEPS]:
            del steps[old]
        if not new:
            return []
        values = [self._summary.Value(tag=tag, simple_value=value) for tag, value in new.items()]
        event = self._event(wall_time=time.time(), step=number, summary=self._summary(value=values))
        return [(run_folder, event.SerializeToString())]

    def _append(self, run_folder: str, event: bytes) -> None:
        """Appends one event to the run's event file, created (with its version event) on first use."""
        path = self._files.get(run_folder)
        if path is not None:
            with open(path, "ab") as file:
                file.write(record(event))
            return
        folder = self.folder / run_folder
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.monitor"
        header = self._event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()
        with open(path, "ab") as file:
            file.write(record(header) + record(event))
        self._files[run_folder] = path
