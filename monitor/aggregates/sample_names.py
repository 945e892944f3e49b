"""The run's sample names by split and id (protocol 1.3 `sample_names`), bounded in bytes.

A chunk is kept as its UTF-8 text joined plus one offset per name (about the text's size plus 8
bytes a name, instead of a Python string each). Names longer than MAX_NAME_LENGTH and chunks beyond
the run's MAX_NAMES_BYTES are not kept but counted; a sample without a name is shown by its id.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from trainer_side.protocol import MAX_NAME_LENGTH

MAX_NAMES_BYTES = 64 << 20  # per run, every split together: text plus offsets

NAMES_TOO_LONG = "names_too_long"
NAMES_OVER_LIMIT = "names_over_limit"


@dataclass(frozen=True)
class _Chunk:
    first: int
    text: bytes  # the names' UTF-8 bytes, one after another
    ends: np.ndarray  # int64: where each name's bytes end in `text`

    @property
    def count(self) -> int:
        return len(self.ends)

    @property
    def size(self) -> int:
        return len(self.text) + self.ends.nbytes

    def name(self, id_: int) -> str:
        place = id_ - self.first
        start = int(self.ends[place - 1]) if place else 0
        return self.text[start:int(self.ends[place])].decode("utf-8")


class NamesTable:
    """Sample names of every split of one run. `names(split, ids)` reads them; the default is the id."""

    def __init__(self, limit: int = MAX_NAMES_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self._chunks: dict[str, dict[int, _Chunk]] = {}  # split -> first -> chunk
        self._firsts: dict[str, list[int]] = {}  # split -> sorted firsts

    def add(self, split: str, first: int, names: list[str]) -> dict[str, int]:
        """Keeps one chunk (replacing an earlier chunk with the same first id). Returns what it did not
        keep, by reason: names too long (kept as missing) or, over the run's limit, the chunk's names."""
        refused: dict[str, int] = {}
        too_long = sum(1 for name in names if len(name) > MAX_NAME_LENGTH)
        if too_long:
            refused[NAMES_TOO_LONG] = too_long
            names = ["" if len(name) > MAX_NAME_LENGTH else name for name in names]
        encoded = [name.encode("utf-8") for name in names]
        chunk = _Chunk(first, b"".join(encoded), np.cumsum([len(e) for e in encoded], dtype=np.int64))
        chunks = self._chunks.setdefault(split, {})
        earlier = chunks.get(first)
        freed = 0 if earlier is None else earlier.size
        if self.size - freed + chunk.size > self.limit:
            return {NAMES_OVER_LIMIT: len(names)}
        self.size += chunk.size - freed
        if earlier is None:
            bisect.insort(self._firsts.setdefault(split, []), first)
        chunks[first] = chunk
        return refused

    def name(self, split: str, id_: int) -> str:
        firsts = self._firsts.get(split)
        if firsts:
            place = bisect.bisect_right(firsts, id_) - 1
            if place >= 0:
                chunk = self._chunks[split][firsts[place]]
                if id_ < chunk.first + chunk.count:
                    name = chunk.name(id_)
                    if name:
                        return name
        return str(id_)

    def names(self, split: str, ids) -> list[str]:
        """The name of each id (its number as text where none is known)."""
        return [self.name(split, int(id_)) for id_ in ids]

    def __len__(self) -> int:
        return sum(chunk.count for chunks in self._chunks.values() for chunk in chunks.values())
