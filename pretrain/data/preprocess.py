"""Tokenize once: per-language ``datasets`` -> checksummed shards + manifest (layout in store.py).

Shard k of a language holds input rows [k * shard_documents, (k + 1) * shard_documents), so the output
is a function of the inputs alone (not of num_proc or the machine), and a re-run skips every shard
whose metadata says it was finished from the same inputs and tokenizer. Files are written under
temporary names and renamed; a shard's .json is written last, so an interrupted run never leaves a
shard that looks finished. Empty documents and empty languages are skipped and counted.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import datasets
import numpy as np
from tqdm import tqdm

from pretrain.data.sources import LanguageSource
from pretrain.data.store import (FORMAT_VERSION, MANIFEST, TOKENIZER, data_fingerprint, open_store, shard_files,
                                 token_dtype)
from pretrain.data.tokenizer import (atomic_write, file_sha256, load_tokenizer, resolve_special_tokens, save_tokenizer,
                                     tokenizer_fingerprint)

DEFAULT_SHARD_DOCUMENTS = 1_000_000


class _Encoder:
    """Picklable batch encoder for ``datasets.map`` (each worker rebuilds the tokenizer from JSON)."""

    def __init__(self, tokenizer_path: Path, text_column: str, dtype: np.dtype):
        self.tokenizer_path, self.text_column, self.dtype = tokenizer_path, text_column, dtype
        self._tokenizer = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}

    def __call__(self, batch: dict) -> dict:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_path)
        texts = [text if isinstance(text, str) and text.strip() else "" for text in batch[self.text_column]]
        encodings = self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return {"ids": [np.asarray(e.ids, dtype=self.dtype) if text else np.zeros(0, self.dtype)
                        for e, text in zip(encodings, texts)],
                "n_chars": [len(text) for text in texts]}


def _write_shard(encoded: datasets.Dataset, root: Path, lang: str, name: str, key: str,
                 dtype: np.dtype, rows: tuple[int, int]) -> dict:
    bin_path, idx_path, meta_path = shard_files(root, lang, name)
    lengths, n_chars, empty = [], 0, 0
    tmp_bin = bin_path.with_name(f".{bin_path.name}.tmp{os.getpid()}")
    with open(tmp_bin, "wb") as out:
        for batch in encoded.with_format("numpy").iter(batch_size=4096):
            keep = [ids for ids in batch["ids"] if len(ids)]
            empty += len(batch["ids"]) - len(keep)
            n_chars += int(batch["n_chars"].sum())
            lengths.extend(len(ids) for ids in keep)
            if keep:
                out.write(np.concatenate(keep).astype(dtype, copy=False).tobytes())
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    tmp_idx = idx_path.with_name(f".{idx_path.name}.tmp{os.getpid()}")
    with open(tmp_idx, "wb") as out:
        np.save(out, offsets)
    tmp_bin.replace(bin_path)
    tmp_idx.replace(idx_path)
    meta = {"name": name, "key": key, "rows": list(rows), "n_docs": len(lengths), "n_tokens": int(offsets[-1]),
            "n_chars": n_chars, "skipped_empty": empty,
            "bin_sha256": file_sha256(bin_path), "idx_sha256": file_sha256(idx_path)}
    atomic_write(meta_path, json.dumps(meta, indent=1).encode())
    return meta


def _finished(root: Path, lang: str, name: str, key: str, dtype: np.dtype) -> dict | None:
    bin_path, idx_path, meta_path = shard_files(root, lang, name)
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    intact = (meta.get("key") == key and idx_path.is_file() and bin_path.is_file()
              and bin_path.stat().st_size == meta["n_tokens"] * dtype.itemsize)
    return meta if intact else None


def write_language(source: LanguageSource, root: Path, tokenizer_path: Path, tokenizer_sha: str,
                   dtype: np.dtype, *, text_column: str, shard_documents: int,
                   num_proc: int | None) -> list[dict]:
    (root / source.lang).mkdir(parents=True, exist_ok=True)
    for stale in (root / source.lang).glob(".*.tmp*"):  # left by an interrupted run
        stale.unlink()
    rows = len(source.dataset)
    encoder = _Encoder(tokenizer_path, text_column, dtype)
    shards = []
    for index, start in enumerate(range(0, rows, shard_documents)):
        end = min(start + shard_documents, rows)
        name = f"shard-{index:05d}"
        key = hashlib.sha256(f"{source.key}\0{tokenizer_sha}\0{start}\0{end}\0{FORMAT_VERSION}".encode()).hexdigest()
        meta = _finished(root, source.lang, name, key, dtype)
        if meta is None:
            part = source.dataset.select(range(start, end))
            encoded = part.map(encoder, batched=True, batch_size=1000, num_proc=num_proc,
                               remove_columns=part.column_names, keep_in_memory=True,
                               load_from_cache_file=False, new_fingerprint=key[:32],
                               features=datasets.Features({"ids": datasets.List(datasets.Value(dtype.name)),
                                                           "n_chars": datasets.Value("int64")}),
                               desc=f"tokenize {source.lang}/{name}")
            meta = _write_shard(encoded, root, source.lang, name, key, dtype, (start, end))
        shards.append(meta)
    return shards


def preprocess(sources: list[LanguageSource], tokenizer_path: str | Path, output: str | Path, *,
               text_column: str = "text", shard_documents: int = DEFAULT_SHARD_DOCUMENTS,
               num_proc: int | None = None, progress: bool = True) -> Path:
    if shard_documents < 1:
        raise ValueError(f"shard_documents={shard_documents} must be >= 1")
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(tokenizer_path)
    if Path(tokenizer_path).is_dir():  # a transformers tokenizer directory: its fast backend's tokenizer.json
        save_tokenizer(tokenizer, root / TOKENIZER)
    elif Path(tokenizer_path).resolve() != (root / TOKENIZER).resolve():
        atomic_write(root / TOKENIZER, Path(tokenizer_path).read_bytes())
    tokenizer_sha = file_sha256(root / TOKENIZER)
    vocab_size = tokenizer.get_vocab_size()
    dtype = token_dtype(vocab_size)
    languages, empty_languages = {}, {}
    for source in tqdm(sources, desc="languages", disable=not progress):
        shards = [] if source.dataset is None else write_language(
            source, root, root / TOKENIZER, tokenizer_sha, dtype, text_column=text_column,
            shard_documents=shard_documents, num_proc=num_proc)
        skipped = sum(s["skipped_empty"] for s in shards)
        kept = [{k: s[k] for k in ("name", "n_docs", "n_tokens", "bin_sha256", "idx_sha256")}
                for s in shards if s["n_docs"]]
        if not kept:
            empty_languages[source.lang] = {"skipped_empty_documents": skipped, "empty_files": source.empty_files}
            continue
        languages[source.lang] = {
            "n_docs": sum(s["n_docs"] for s in kept), "n_tokens": sum(s["n_tokens"] for s in kept),
            "n_chars": sum(s["n_chars"] for s in shards), "skipped_empty_documents": skipped,
            "empty_files": source.empty_files, "shards": kept}
    if not languages:
        raise ValueError(f"no language has any non-empty document (empty: {sorted(empty_languages)}); "
                         f"nothing to write to {root}")
    manifest = {"version": FORMAT_VERSION, "tokenizer_sha256": tokenizer_sha, "vocab_size": vocab_size,
                "dtype": dtype.name, "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
                "special_tokens": resolve_special_tokens(tokenizer).roles(),
                "languages": languages, "empty_languages": empty_languages,
                "fingerprint": data_fingerprint(tokenizer_sha, languages)}
    atomic_write(root / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode())
    open_store(root)  # every shard hashed once more against the manifest, then recorded: training need not
    return root
