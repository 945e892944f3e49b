"""CRC-32C (Castagnoli), the checksum of TensorBoard's event-file records, computed with numpy.

TensorBoard's own writer checksums in pure Python, one byte per loop turn, which costs the monitor
process's CPU and GIL about as long as a figure takes to draw. Here the bytes are cut into lanes of
LANE bytes, all lanes advance one byte per numpy step, and the lanes' checksums are joined in
order: a CRC register is linear over GF(2), so the register after a lane is the register before it
moved through LANE zero bytes (`_shift`) XOR the lane's own checksum from zero.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

POLYNOMIAL = 0x82F63B78  # Castagnoli, bit-reversed
LANE = 1024
_MASK_DELTA = 0xA282EAD8


def _byte_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ POLYNOMIAL, table >> 1).astype(np.uint32)
    return table


_TABLE = _byte_table()
_TABLE_LIST = [int(x) for x in _TABLE]


def _update(register: int, data: bytes) -> int:
    """The register after `data`, one byte at a time (for short inputs and the tail)."""
    table = _TABLE_LIST
    for byte in data:
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


@lru_cache(maxsize=1)
def _shift_tables() -> tuple[list[int], ...]:
    """Four 256-entry tables whose XOR, indexed by the register's four bytes, gives the register
    after LANE zero bytes."""
    zeros = bytes(LANE)
    columns = [_update(1 << bit, zeros) for bit in range(32)]
    tables = []
    for part in range(4):
        table = [0] * 256
        for value in range(1, 256):
            low = value & -value
            table[value] = table[value ^ low] ^ columns[8 * part + low.bit_length() - 1]
        tables.append(table)
    return tuple(tables)


def _shift(register: int, tables: tuple[list[int], ...]) -> int:
    t0, t1, t2, t3 = tables
    return t0[register & 0xFF] ^ t1[(register >> 8) & 0xFF] ^ t2[(register >> 16) & 0xFF] ^ t3[register >> 24]


def crc32c(data: bytes) -> int:
    """The CRC-32C of `data` (initial value and final XOR 0xFFFFFFFF, as TensorFlow's)."""
    lanes = len(data) // LANE
    register = 0xFFFFFFFF
    if lanes > 1:
        block = np.frombuffer(data, dtype=np.uint8, count=lanes * LANE).reshape(lanes, LANE).T.copy()
        lane = np.zeros(lanes, dtype=np.uint32)
        for column in block:
            lane = _TABLE[(lane ^ column) & 0xFF] ^ (lane >> 8)
        tables = _shift_tables()
        for value in lane.tolist():
            register = _shift(register, tables) ^ value
        data = data[lanes * LANE:]
    return _update(register, data) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C that TFRecord framing stores (rotated right by 15 bits, plus a constant)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF
