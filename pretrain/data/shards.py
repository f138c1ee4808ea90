"""One shard streamed to disk (layout in store.py), plus the per-document hashes preprocess keeps beside it.

``ShardWriter`` appends documents as they are tokenized: tokens go to the ``.bin`` in 8 MB writes (hashed
on the way), and only per-document numbers stay in memory (length, 16-byte hash, prompt length: at
most 28 bytes a document, 28 MB for a shard of a million). ``close`` writes the offsets and sidecars,
then the ``.json`` last, each under a temporary name and renamed, so an interrupted run never leaves
a shard that looks finished.

``<name>.hash.npy`` (uint8 [n_docs, 16], blake2b of each document's tokens, plus the prompt length
for instruction records) is preprocess's own: finalize counts and drops exact duplicates with it.
"""
from __future__ import annotations

import hashlib
import io
import json
from array import array
from pathlib import Path

import numpy as np

from pretrain.data.store import prompt_file, shard_files
from pretrain.data.tokenizer import atomic_write, temporary_path

HASH_BYTES = 16
FLUSH_BYTES = 8 << 20


def hash_file(root: Path, entry: str, name: str) -> Path:
    return root / entry / f"{name}.hash.npy"


def _save_npy(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as .npy atomically; returns the file's sha256."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write(path, buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def document_hash(tokens: np.ndarray, prompt_length: int | None) -> bytes:
    digest = hashlib.blake2b(tokens.tobytes(), digest_size=HASH_BYTES)
    if prompt_length is not None:  # the same text split differently is another record
        digest.update(int(prompt_length).to_bytes(8, "little"))
    return digest.digest()


class ShardWriter:
    def __init__(self, root: Path, entry: str, name: str, key: str, dtype: np.dtype, instruction: bool):
        (root / entry).mkdir(parents=True, exist_ok=True)
        self.root, self.entry, self.name, self.key, self.dtype = root, entry, name, key, dtype
        self.bin_path = shard_files(root, entry, name)[0]
        self._tmp_bin = temporary_path(self.bin_path)
        self._out = open(self._tmp_bin, "wb")
        self._sha = hashlib.sha256()
        self._pending: list[np.ndarray] = []
        self._pending_bytes = 0
        self.lengths = array("q")  # 8 + 16 (+ 4) bytes a document: all a shard keeps in memory
        self.hashes = bytearray()
        self.prompts = array("i") if instruction else None
        self.counts = {"n_chars": 0, "skipped_empty": 0, "stripped_eos": 0}

    def add(self, tokens: np.ndarray, prompt_length: int | None = None) -> None:
        tokens = tokens.astype(self.dtype, copy=False)
        self._pending.append(tokens)
        self._pending_bytes += tokens.nbytes
        self.lengths.append(len(tokens))
        self.hashes += document_hash(tokens, prompt_length)
        if self.prompts is not None:
            self.prompts.append(prompt_length)
        if self._pending_bytes >= FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            data = np.concatenate(self._pending).tobytes()
            self._sha.update(data)
            self._out.write(data)
        self._pending, self._pending_bytes = [], 0

    def close(self, rows: tuple[int, int]) -> dict:
        self._flush()
        self._out.close()
        self._tmp_bin.replace(self.bin_path)
        _, idx_path, meta_path = shard_files(self.root, self.entry, self.name)
        offsets = np.concatenate([[0], np.cumsum(np.frombuffer(self.lengths, dtype=np.int64))]).astype(np.int64)
        meta = {"name": self.name, "key": self.key, "rows": list(rows), "n_docs": len(self.lengths),
                "n_tokens": int(offsets[-1]), **self.counts, "bin_sha256": self._sha.hexdigest(),
                "idx_sha256": _save_npy(idx_path, offsets)}
        if self.prompts is not None:
            meta["prompt_sha256"] = _save_npy(prompt_file(self.root, self.entry, self.name),
                                              np.frombuffer(self.prompts, dtype=np.int32))
        hashes = np.frombuffer(bytes(self.hashes), dtype=np.uint8).reshape(-1, HASH_BYTES)
        _save_npy(hash_file(self.root, self.entry, self.name), hashes)
        atomic_write(meta_path, json.dumps(meta, indent=1).encode())
        return meta

    def abort(self) -> None:
        self._out.close()
        self._tmp_bin.unlink(missing_ok=True)


def finished(root: Path, entry: str, name: str, key: str, dtype: np.dtype) -> dict | None:
    """The shard's metadata when it was completed from the same inputs and settings, else None."""
    bin_path, idx_path, meta_path = shard_files(root, entry, name)
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    sidecars = [idx_path, hash_file(root, entry, name), *([prompt_file(root, entry, name)]
                                                          if "prompt_sha256" in meta else [])]
    intact = (meta.get("key") == key and bin_path.is_file() and all(p.is_file() for p in sidecars)
              and bin_path.stat().st_size == meta["n_tokens"] * dtype.itemsize)
    return meta if intact else None


def write_subset(root: Path, entry: str, meta: dict, keep: np.ndarray, name: str, key: str, dtype: np.dtype) -> dict:
    """A copy of shard ``meta`` holding only the documents where ``keep`` is set (dedup), streamed; its
    character and empty-document counts stay those of the input rows."""
    bin_path, idx_path, _ = shard_files(root, entry, meta["name"])
    offsets = np.load(idx_path)
    tokens = np.memmap(bin_path, dtype=dtype, mode="r") if meta["n_tokens"] else np.zeros(0, dtype)
    prompts = np.load(prompt_file(root, entry, meta["name"])) if "prompt_sha256" in meta else None
    writer = ShardWriter(root, entry, name, key, dtype, instruction=prompts is not None)
    for doc in np.flatnonzero(keep):
        writer.add(np.array(tokens[offsets[doc]:offsets[doc + 1]]), None if prompts is None else int(prompts[doc]))
    writer.counts.update({k: meta[k] for k in writer.counts})
    return writer.close(tuple(meta["rows"]))
