"""The receive thread's queue to the pipeline thread, bounded in bytes.

The receiver puts a whole batch at once, so that the pipeline thread wakes once per batch, not once
per message; the pipeline thread (the only reader) takes one `(message, frame size, resumed)` at a
time, in order. When the queue holds `capacity` bytes, `put_many` waits (in short waits that also
check `close`) until the reader has taken enough: the receive thread then stops reading the socket,
ZeroMQ's own bounded queues fill, and the senders' non-blocking queues drop and count. Nothing is
dropped here while the queue is open.
"""

from __future__ import annotations

import queue
import threading
from collections import deque

from trainer_side.protocol import Message

DEFAULT_CAPACITY = 128 << 20
# The PULL socket's receive high-water mark, in frames per connected sender. With the queue above,
# the monitor holds at most DEFAULT_CAPACITY + one receive batch + RCVHWM frames per sender of
# received but unprocessed data (docs/design-notes.md, "Bounded memory").
RCVHWM = 128
# What a queued message costs beyond its frame: the decoded Message, its body and numpy views.
MESSAGE_OVERHEAD = 1024
WAIT_S = 0.1  # one bounded wait while the queue is full


class Handoff:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        """Args:
            capacity: bytes queued at most (frame sizes plus MESSAGE_OVERHEAD per message). A batch
                larger than the whole capacity is still taken when the queue is empty.
        """
        if capacity <= 0:
            raise ValueError(f"capacity must be a positive number of bytes, got {capacity}")
        self.capacity = capacity
        self.queued_bytes = 0  # what the queue holds now
        self.peak_bytes = 0
        self.waits = 0  # puts that found the queue full and waited
        self.unqueued = 0  # messages refused because the queue was closed while full
        self._batches: deque[tuple[list[tuple[Message, int]], bool, int]] = deque()
        self._current: deque[tuple[Message, int]] = deque()  # the rest of the batch being read
        self._current_bytes = 0  # its share of queued_bytes, released when it is used up
        self._resumed = False
        self._closed = False
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    def put_many(self, items: list[tuple[Message, int]], *, resumed: bool = False) -> bool:
        """Queues (message, frame size) pairs; `resumed` marks messages re-read from a run's log.

        Waits while the queue is full. Returns True once queued; False (and counts them in
        `unqueued`) only when the queue was closed while it waited or before.
        """
        if not items:
            return True
        cost = sum(size for _, size in items) + MESSAGE_OVERHEAD * len(items)
        with self._lock:
            if self.queued_bytes and self.queued_bytes + cost > self.capacity:
                self.waits += 1
                while not self._closed and self.queued_bytes and self.queued_bytes + cost > self.capacity:
                    self._not_full.wait(WAIT_S)
            if self._closed and self.queued_bytes + cost > self.capacity:
                self.unqueued += len(items)
                return False
            self._batches.append((items, resumed, cost))
            self.queued_bytes += cost
            self.peak_bytes = max(self.peak_bytes, self.queued_bytes)
            self._not_empty.notify()
        return True

    def get(self, block: bool = True, timeout: float | None = None) -> tuple[Message, int, bool]:
        """The next message, as `queue.SimpleQueue.get` would give it (raises queue.Empty)."""
        current = self._current
        if not current:
            with self._lock:
                if self._current_bytes:  # the previous batch is used up: its bytes are free again
                    self.queued_bytes -= self._current_bytes
                    self._current_bytes = 0
                    self._not_full.notify_all()
                if not self._batches:
                    if not block or not self._not_empty.wait_for(lambda: self._batches, timeout):
                        raise queue.Empty
                items, self._resumed, self._current_bytes = self._batches.popleft()
            current.extend(items)
        message, size = current.popleft()
        return message, size, self._resumed

    def empty(self) -> bool:
        return not self._current and not self._batches

    def close(self) -> None:
        """From now on a put that finds the queue full returns at once instead of waiting (shutdown)."""
        with self._lock:
            self._closed = True
            self._not_full.notify_all()
