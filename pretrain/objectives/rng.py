"""Counter-based random numbers keyed by (seed, sample id), vectorised over a whole batch.

Every random number the objective uses is a pure function ``uniform(key, stream, index)``: the key
comes from (seed, global sample id), the stream names what the number is for (span lengths, places,
Part-B order, ...) and the index counts draws inside the stream. So a row can be rebuilt alone, in
any worker, after any resume, and a batch draws all its numbers in a few numpy calls instead of
constructing one ``np.random.Generator`` per row (which alone costs more than building the row).

Arithmetic wraps modulo 2**64 (numpy array ops never warn about it; inputs are made at least
1-d so no scalar op is involved). The mixing function is SplitMix64's output function:
``uniform(key, s, i)`` is draw number ``s * 2**32 + i`` of the SplitMix64 sequence seeded with
``key`` (SplitMix64 passes BigCrush).
"""
from __future__ import annotations

import functools
import zlib

import numpy as np

# 0-d arrays rather than numpy scalars: array-with-0-d-array ufuncs dispatch faster, and the
# arrays here are small enough for that to matter.
_GAMMA, _M1, _M2 = (np.array(c, dtype=np.uint64) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))
_ONE, _SHIFT_30, _SHIFT_27, _SHIFT_31, _SHIFT_11 = (np.array(n, dtype=np.uint64) for n in (1, 30, 27, 31, 11))
_TO_UNIT = 2.0 ** -53

# Stream ids: one per purpose, so adding a purpose never shifts the numbers of another. The collator's
# own; every strategy names its streams (``stream_id``), the oldest keep the small ids they always had.
STREAM_MIXTURE = 1
STREAM_ORDER = 4


@functools.lru_cache(maxsize=None)
def stream_id(owner: str, purpose: str) -> int:
    """A stream id for ``purpose`` of ``owner`` (a strategy name): stable across runs and versions,
    in [2**31, 2**32) so that it never meets the small fixed ids."""
    return 0x8000_0000 | zlib.crc32(f"{owner}/{purpose}".encode()) >> 1


def _mix(x: np.ndarray) -> np.ndarray:
    # In place on fresh temporaries: the arrays are small, so each saved allocation counts.
    y = x >> _SHIFT_30
    y ^= x
    y *= _M1
    x = y >> _SHIFT_27
    x ^= y
    x *= _M2
    y = x >> _SHIFT_31
    y ^= x
    return y


@functools.lru_cache(maxsize=16)
def _seed_base(seed: int) -> np.ndarray:
    return _mix(np.asarray([seed % 2 ** 64], dtype=np.uint64) * _GAMMA + _GAMMA)


def keys(seed: int, ids: np.ndarray | int) -> np.ndarray:
    """uint64 key per id, for ``seed`` (e.g. ids = sample ids, or sample_id // global_batch_size)."""
    return _mix(_seed_base(seed) ^ (np.atleast_1d(np.asarray(ids, dtype=np.uint64)) + _ONE) * _GAMMA)


def subkeys(parent: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Independent child keys (e.g. one per document of a row) from the parent keys."""
    return _mix(_mix(parent ^ _M2) + (np.atleast_1d(np.asarray(index, dtype=np.uint64)) + _ONE) * _GAMMA)


def uniform(key: np.ndarray, stream: int, index: np.ndarray | int = 0) -> np.ndarray:
    """Floats in [0, 1), one per element of ``broadcast(key, index)``, 53 random bits each."""
    counter = np.atleast_1d(np.asarray(index, dtype=np.uint64)) + np.uint64((stream << 32) + 1)
    bits = _mix(key + counter * _GAMMA)
    return (bits >> _SHIFT_11).astype(np.float64) * _TO_UNIT
