"""Megatron-LM indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``, the ``MMapIndexedDataset`` format) as a
source: documents already tokenized for Megatron are imported into our shards without re-tokenizing.

The ``.idx`` file (little-endian, megatron/core/datasets/indexed_dataset.py)::

    b"MMIDIDX\\x00\\x00"  <Q version = 1  <B dtype code  <Q sequence_count  <Q document_count
    int32[sequence_count]  sequence lengths (tokens)
    int64[sequence_count]  sequence pointers (byte offsets into .bin)
    int64[document_count]  document indices: document d is sequences [idx[d], idx[d + 1]); starts at 0
    int8[sequence_count]   sequence modes (multimodal datasets only; ignored)

The ``.bin`` file is the sequences' tokens back to back. A document is the concatenation of its
sequences (one per document, or one per sentence with ``--split-sentences``), so document boundaries
are kept. Reading goes through fsspec in bounded chunks (local or remote alike). Everything that
does not match the format, and any id outside the tokenizer's vocabulary, is refused naming the file.
"""
from __future__ import annotations

import struct
from typing import Iterator, Mapping

import numpy as np

from pretrain.data.remote import display, filesystem

MAGIC = b"MMIDIDX\x00\x00"
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
          8: np.uint16}


class MegatronDataset:
    """One ``PREFIX.idx``/``PREFIX.bin`` pair, read document by document."""

    def __init__(self, prefix: str, storage_options: Mapping | None = None):
        self.fs, base = filesystem(prefix, storage_options)
        self.idx_path, self.bin_path = base + ".idx", base + ".bin"
        self.name = display(self.fs, self.idx_path)
        with self.fs.open(self.idx_path, "rb") as handle:
            raw = handle.read(HEADER.size)
        if len(raw) < HEADER.size or raw[:9] != MAGIC:
            raise ValueError(f"{self.name} is not a Megatron index file (header {raw[:9]!r}, expected {MAGIC!r})")
        _, version, code, self.sequence_count, document_count = HEADER.unpack(raw)
        if version != 1:
            raise ValueError(f"{self.name}: Megatron index version {version}, this reader knows version 1")
        if code not in DTYPES or np.dtype(DTYPES[code]).kind not in "iu":
            raise ValueError(f"{self.name}: token dtype code {code} is not an integer type of the format "
                             f"({ {k: np.dtype(v).name for k, v in DTYPES.items()} })")
        self.dtype = np.dtype(DTYPES[code]).newbyteorder("<")
        self.n_docs = document_count - 1
        n = self.sequence_count
        plain = HEADER.size + 12 * n + 8 * document_count
        size = self.fs.size(self.idx_path)
        if document_count < 1 or size not in (plain, plain + n):  # + n: multimodal sequence modes
            raise ValueError(f"{self.name} has {size} bytes; {n} sequences and {document_count} document "
                             f"indices need {plain} (or {plain + n} with modes): truncated or not this format")
        self._lengths_at, self._pointers_at = HEADER.size, HEADER.size + 4 * n
        self._documents_at = HEADER.size + 12 * n
        if not self.fs.exists(self.bin_path):
            raise FileNotFoundError(f"Megatron dataset {self.name}: {display(self.fs, self.bin_path)} is missing")
        bin_size = self.fs.size(self.bin_path)
        with self.fs.open(self.idx_path, "rb") as index:
            ends = [int(self._read(index, self._documents_at, np.int64, i, i + 1)[0]) for i in (0, document_count - 1)]
            last = self._read(index, self._pointers_at, np.int64, n - 1, n) if n else np.zeros(1, np.int64)
            expected = int(last[0]) + (int(self._sequence_bytes(index, n - 1, n)[0]) if n else 0)
        if ends[0] != 0 or ends[-1] != n or bin_size != expected:
            raise ValueError(f"{self.name}: document indices run {ends} over {n} sequences ending at byte "
                             f"{expected}, and the .bin holds {bin_size} bytes: the pair does not match")

    @staticmethod
    def _read(index, at: int, dtype, start: int, stop: int) -> np.ndarray:
        dtype = np.dtype(dtype).newbyteorder("<")
        index.seek(at + start * dtype.itemsize)
        return np.frombuffer(index.read((stop - start) * dtype.itemsize), dtype=dtype)

    def _sequence_bytes(self, index, start: int, stop: int) -> np.ndarray:
        return self._read(index, self._lengths_at, np.int32, start, stop).astype(np.int64) * self.dtype.itemsize

    def documents(self, vocab_size: int, batch_documents: int = 4096) -> Iterator[list[np.ndarray]]:
        """Every document's tokens (int64), ``batch_documents`` at a time, in order; ids outside
        [0, vocab_size) are refused (the data was made with another tokenizer)."""
        with self.fs.open(self.idx_path, "rb") as index, self.fs.open(self.bin_path, "rb") as data:
            for first in range(0, self.n_docs, batch_documents):
                last = min(first + batch_documents, self.n_docs)
                bounds = self._read(index, self._documents_at, np.int64, first, last + 1)
                if np.any(np.diff(bounds) < 0):
                    raise ValueError(f"{self.name}: document indices {first}..{last} are not non-decreasing")
                s0, s1 = int(bounds[0]), int(bounds[-1])
                sizes = self._sequence_bytes(index, s0, s1)
                pointers = self._read(index, self._pointers_at, np.int64, s0, s1)
                if len(pointers) and np.any(pointers != pointers[0] + np.concatenate([[0], np.cumsum(sizes[:-1])])):
                    raise ValueError(f"{self.name}: sequences {s0}..{s1} are not stored back to back in the .bin")
                data.seek(int(pointers[0]) if len(pointers) else 0)
                tokens = np.frombuffer(data.read(int(sizes.sum())), dtype=self.dtype).astype(np.int64)
                ends = np.concatenate([[0], np.cumsum(sizes)])[bounds - s0] // self.dtype.itemsize
                bad = np.flatnonzero((tokens < 0) | (tokens >= vocab_size))
                if len(bad):
                    doc = first + int(np.searchsorted(ends, bad[0], side="right")) - 1
                    raise ValueError(f"Megatron dataset {self.name}: document {doc} holds token id "
                                     f"{int(tokens[bad[0]])}, outside the vocabulary [0, {vocab_size}) of the "
                                     f"given tokenizer; give the tokenizer the data was made with")
                yield [tokens[a:b] for a, b in zip(ends[:-1], ends[1:])]
