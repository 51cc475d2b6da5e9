"""Scored rows remembered by their model input: the key of a row and a bounded LRU cache of merged logits.

A row's model input is its token id chunks, which already encode its text, its label set, the prompt, the
few-shot examples and the window; the model, dtype and backend are fixed for one ``Classifier``. So two rows
with the same key get the same merged logits, and the engine scores such rows once (``Classifier.score_encoded``).
What depends on the row itself (label names, calibration, thresholds, the ``truncated`` status) is applied
after the lookup, as for any scored row. Importing this module loads neither torch nor transformers.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

KEY_BYTES = 16
# Bytes one entry costs besides its key and logits (OrderedDict slot, bytes and ndarray headers), measured
# with tracemalloc on CPython (about 210 bytes + the 49-byte key object); used to keep the cache within ``max_bytes``.
ENTRY_OVERHEAD = 250
DEFAULT_MAX_BYTES = 256 * 2**20


def row_key(chunks: Sequence[Sequence[int]]) -> bytes:
    """A 16-byte BLAKE2b digest of a row's token id chunks (each chunk's length, then its ids as int32)."""
    digest = hashlib.blake2b(digest_size=KEY_BYTES)
    for chunk in chunks:
        digest.update(len(chunk).to_bytes(4, "little"))
        digest.update(array("i", chunk))
    return digest.digest()


class ResultCache:
    """A least-recently-used map from ``row_key`` to a row's merged logits, bounded in rows and in bytes.

    ``max_rows`` must be positive; ``max_bytes`` caps the memory of keys + logits + per-entry overhead.
    Stored arrays are read-only copies, so a caller cannot change what a later hit returns.
    """

    def __init__(self, max_rows: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_rows <= 0:
            raise ValueError(f"max_rows must be a positive number of rows, got {max_rows!r}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes!r}")
        self.max_rows = int(max_rows)
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    @staticmethod
    def entry_bytes(key: bytes, logits: np.ndarray) -> int:
        return len(key) + logits.nbytes + ENTRY_OVERHEAD

    def get(self, key: bytes) -> np.ndarray | None:
        """The logits stored under ``key`` (now the most recently used), or None."""
        logits = self._entries.get(key)
        if logits is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return logits

    def put(self, key: bytes, logits: np.ndarray) -> None:
        """Store a copy of ``logits``; least recently used entries leave until both bounds hold again.

        An entry larger than ``max_bytes`` on its own is not stored.
        """
        size = self.entry_bytes(key, logits)
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.nbytes -= self.entry_bytes(key, old)
        stored = np.array(logits, copy=True)
        stored.setflags(write=False)
        self._entries[key] = stored
        self.nbytes += size
        while len(self._entries) > self.max_rows or self.nbytes > self.max_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.nbytes -= self.entry_bytes(evicted_key, evicted)
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


__all__ = ["DEFAULT_MAX_BYTES", "KEY_BYTES", "ResultCache", "row_key"]
