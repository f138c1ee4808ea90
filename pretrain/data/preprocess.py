"""Tokenize once: a plan of inputs -> checksummed shards + manifest (layout in store.py), on one node or many.

Each input is streamed in row batches and tokenized into its own shards: rows [c * shard_documents,
(c + 1) * shard_documents) of the input (per entry, for inputs whose rows name their language) become
``<entry>/shard-<input>-<c>``. Only per-document numbers stay in memory, so memory is flat however
large the input. The output is a function of the inputs alone: not of num_proc, the number of
nodes, or the machine. When an input is done, ``.inputs/<group>/<input>.json`` records its shards.

``run_node`` tokenizes one node's share (nodes.py); a re-run skips finished inputs and finished
shards (same inputs, tokenizer and settings) and redoes the rest, so a node that died is simply
re-run. ``finalize`` checks that every input of the plan is done (refusing, by node and input, a
share that is missing), counts exact duplicate documents per entry and optionally drops them
(keeping the first), and writes the manifest. ``preprocess`` is both on one node.
"""
from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from pretrain.data import nodes
from pretrain.data.instruct import encode_pairs, record_pairs
from pretrain.data.megatron import MegatronDataset
from pretrain.data.shards import ShardWriter, finished, hash_file, write_subset
from pretrain.data.sources import Input, Plan, SourceOptions, digest, read_rows, text_rows
from pretrain.data.store import (FORMAT_VERSION, MANIFEST, TOKENIZER, data_fingerprint, open_store, shard_files,
                                 token_dtype)
from pretrain.data.tokenizer import (atomic_write, file_sha256, load_tokenizer, resolve_special_tokens,
                                     tokenizer_fingerprint)

DEFAULT_SHARD_DOCUMENTS = 1_000_000
RECORDS = ".inputs"
MANIFEST_SHARD_KEYS = ("name", "n_docs", "n_tokens", "bin_sha256", "idx_sha256", "prompt_sha256")


class IncompleteDataError(ValueError):
    """finalize found inputs of the plan that no node has finished."""


class Setup:
    """What processing any input needs; picklable (worker processes load the tokenizer themselves)."""

    def __init__(self, root: Path, tokenizer_path: str | Path, shard_documents: int, options: SourceOptions):
        if shard_documents < 1:
            raise ValueError(f"shard_documents={shard_documents} must be >= 1")
        root.mkdir(parents=True, exist_ok=True)
        tokenizer = load_tokenizer(tokenizer_path)
        self.tokenizer_path = str(tokenizer_path)
        # a transformers tokenizer directory is stored as its fast backend's tokenizer.json
        given = (tokenizer.to_str(pretty=True).encode("utf-8") if Path(tokenizer_path).is_dir()
                 else Path(tokenizer_path).read_bytes())
        if not (root / TOKENIZER).is_file() or (root / TOKENIZER).read_bytes() != given:
            atomic_write(root / TOKENIZER, given)
        self.root, self.shard_documents, self.options = root, shard_documents, options
        self.tokenizer_sha = file_sha256(root / TOKENIZER)
        self.tokenizer_fingerprint = tokenizer_fingerprint(tokenizer)
        self.vocab_size = tokenizer.get_vocab_size()
        self.dtype = token_dtype(self.vocab_size)
        self.special = resolve_special_tokens(tokenizer)  # eos: Megatron documents' own end token is dropped

    @functools.cached_property
    def tokenizer(self):
        return load_tokenizer(self.root / TOKENIZER)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "tokenizer"}

    def input_key(self, source: Input) -> str:
        return digest(source.identity, self.tokenizer_sha, self.shard_documents, FORMAT_VERSION)

    def record_path(self, source: Input) -> Path:
        return self.root / RECORDS / source.group / f"{source.ordinal:05d}.json"


def shard_prefix(source: Input) -> str:
    return f"shard-{'c' if source.entry is None else ''}{source.ordinal:05d}-"


class EntryShards:
    """The shards one input writes for one entry: chunk c holds the entry's rows [c*S, (c+1)*S)."""

    def __init__(self, setup: Setup, source: Input, entry: str, key: str):
        self.setup, self.source, self.entry, self.key = setup, source, entry, key
        self.rows = 0  # rows routed here so far (``route``)
        self.chunk, self.chunk_rows, self.writer, self.metas = -1, 0, None, []
        self._finished: tuple[int, dict | None] = (-1, None)

    def _finished_shard(self, chunk: int) -> tuple[str, str, dict | None]:
        name = f"{shard_prefix(self.source)}{chunk:05d}"
        key = digest(self.key, self.entry, chunk)
        return name, key, finished(self.setup.root, self.entry, name, key, self.setup.dtype)

    def route(self) -> tuple[int, bool]:
        """(chunk of the next row, whether that row must be tokenized: its shard is not finished)."""
        chunk = self.rows // self.setup.shard_documents
        self.rows += 1
        if self._finished[0] != chunk:
            self._finished = (chunk, self._finished_shard(chunk)[2])
        return chunk, self._finished[1] is None

    def add_row(self, chunk: int, documents: list[tuple[np.ndarray, int | None, int]] | None) -> None:
        """The next row's documents (tokens, prompt length or None, characters), in row order; None for
        a row of a finished shard. A row without any document is counted as empty."""
        if chunk != self.chunk:
            self._close()
            self.chunk, self.chunk_rows = chunk, 0
            name, key, done = self._finished_shard(chunk)
            if done is not None:
                self.metas.append(done)
            else:
                self.writer = ShardWriter(self.setup.root, self.entry, name, key, self.setup.dtype,
                                          instruction=self.source.kind == "instruction")
        self.chunk_rows += 1
        if self.writer is None:
            return
        counts = self.writer.counts
        counts["skipped_empty"] += not documents
        for tokens, prompt_length, chars in documents:
            counts["n_chars"] += chars
            if len(tokens):
                self.writer.add(tokens, prompt_length)
            else:
                counts["skipped_empty"] += 1

    def _close(self) -> None:
        if self.writer is not None:
            start = self.chunk * self.setup.shard_documents
            self.metas.append(self.writer.close((start, start + self.chunk_rows)))
            self.writer = None

    def close(self) -> list[dict]:
        self._close()
        return self.metas


def _batches(source: Input, setup: Setup) -> Iterator[tuple[list[str], list[list], str]]:
    """(entry of each row, raw documents of each row, kind of those documents) per batch of rows."""
    if source.kind == "megatron":
        for docs in MegatronDataset(source.location, setup.options.storage_options).documents(setup.vocab_size):
            yield [source.entry] * len(docs), [[d] if len(d) else [] for d in docs], "tokens"
        return
    first_row = 0
    for batch in read_rows(source, setup.options):
        where = f"input {source.location} (rows from {first_row})"
        if source.kind == "instruction":
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
            pairs = [record_pairs(row, setup.options.instruction, f"input {source.location} row {first_row + i}")
                     for i, row in enumerate(rows)]
            yield [source.entry] * len(rows), pairs, "pairs"
        else:
            langs, texts = text_rows(source, setup.options, batch, where)
            yield langs, texts, "texts"
        first_row += len(next(iter(batch.values()), []))


def _encode(setup: Setup, docs: list[list], kind: str) -> list[list[tuple[np.ndarray, int | None, int]]]:
    """Per row: (tokens, prompt length or None, characters) of each of its documents."""
    flat = [d for row in docs for d in row]
    if kind == "tokens":  # Megatron's appended end-of-document token goes: the loader frames with its own eos
        encoded = [(d[:-1] if d[-1] == setup.special.eos else d, None, 0) for d in flat]
    elif kind == "pairs":
        encoded = [(ids, k, len(p) + len(r)) for (ids, k), (p, r) in
                   zip(encode_pairs(setup.tokenizer, flat, setup.dtype), flat)]
    else:
        encodings = setup.tokenizer.encode_batch_fast(flat, add_special_tokens=False)
        encoded = [(np.asarray(e.ids, dtype=setup.dtype), None, len(t)) for e, t in zip(encodings, flat)]
    out, at = [], 0
    for row in docs:
        out.append(encoded[at:at + len(row)])
        at += len(row)
    return out


def process_input(source: Input, setup: Setup) -> dict:
    """Tokenize one input into its shards (skipping finished ones); returns and writes its record."""
    key = setup.input_key(source)
    record = _load_record(setup, source)
    if record is not None and record["key"] == key and all(
            finished(setup.root, entry, meta["name"], meta["key"], setup.dtype)
            for entry, metas in record["entries"].items() for meta in metas):
        return record
    # what an interrupted run of this input left (only its own: other nodes may be writing beside it)
    for stale in [*setup.root.glob(f"{source.entry or '*'}/.{shard_prefix(source)}*.tmp*"),
                  *setup.record_path(source).parent.glob(f".{setup.record_path(source).name}.tmp*")]:
        stale.unlink(missing_ok=True)
    series: dict[str, EntryShards] = {}
    empty_file = source.size == 0 and source.rows is None
    for langs, docs, kind in [] if empty_file else _batches(source, setup):
        routes = [series.setdefault(lang, EntryShards(setup, source, lang, key)).route() for lang in langs]
        wanted = [i for i, (_, needed) in enumerate(routes) if needed]
        encoded = dict(zip(wanted, _encode(setup, [docs[i] for i in wanted], kind)))
        for i, (lang, (chunk, _)) in enumerate(zip(langs, routes)):
            series[lang].add_row(chunk, encoded.get(i))
    record = {"key": key, "location": source.location, "kind": source.kind, "empty_file": empty_file,
              "tokenizer_fingerprint": setup.tokenizer_fingerprint,
              "entries": {lang: s.close() for lang, s in sorted(series.items())}}
    setup.record_path(source).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(setup.record_path(source), json.dumps(record, indent=1, ensure_ascii=False).encode())
    return record


def _load_record(setup: Setup, source: Input) -> dict | None:
    path = setup.record_path(source)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def run_node(plan: Plan, setup: Setup, *, num_nodes: int = 1, node_rank: int = 0,
             num_proc: int | None = None, progress: bool = True) -> list[dict]:
    """Tokenize this node's share of the plan; ``num_proc`` processes take whole inputs each."""
    mine = nodes.share(plan.inputs, num_nodes, node_rank)
    work = functools.partial(process_input, setup=setup)
    bar = dict(total=len(mine), desc=f"inputs (node {node_rank}/{num_nodes})", disable=not progress)
    if num_proc and num_proc > 1 and len(mine) > 1:
        with multiprocessing.get_context("spawn").Pool(min(num_proc, len(mine))) as pool:
            return list(tqdm(pool.imap(work, mine), **bar))
    return [work(source) for source in tqdm(mine, **bar)]


def _missing_message(plan: Sequence[Input], missing: list[int], num_nodes: int) -> str:
    owner = nodes.assign(plan, num_nodes)
    by_node: dict[int, list[str]] = {}
    for index in missing:
        by_node.setdefault(owner[index], []).append(plan[index].location)
    shares = "; ".join(f"node {rank} of {num_nodes}: {len(names)} input(s) ({', '.join(names[:3])}"
                       f"{', ...' if len(names) > 3 else ''})" for rank, names in sorted(by_node.items()))
    return (f"{len(missing)} of {len(plan)} inputs have no finished record under {RECORDS}/ — {shares}; "
            f"re-run those nodes (preprocess --num-nodes {num_nodes} --node-rank R with the same inputs, "
            f"tokenizer and --shard-documents), then finalize again")


def _check_tokenizer(stale: list[dict | None], setup: Setup) -> None:
    """Records made with another tokenizer: name both, not just 'missing'."""
    other = next((r for r in stale if r and r.get("tokenizer_fingerprint") != setup.tokenizer_fingerprint), None)
    if other is not None:
        raise IncompleteDataError(
            f"input {other['location']} was tokenized with tokenizer fingerprint {other.get('tokenizer_fingerprint')}, "
            f"but --tokenizer {setup.tokenizer_path} has fingerprint {setup.tokenizer_fingerprint}; give every node "
            f"and finalize the same --tokenizer (or re-run the nodes with this one)")


def _duplicates(setup: Setup, entry: str, shards: list[dict]) -> list[np.ndarray]:
    """Per shard, a mask of the documents that repeat an earlier one of the entry (exact token match)."""
    hashes = [np.load(hash_file(setup.root, entry, m["name"])) for m in shards]
    keys = np.ascontiguousarray(np.concatenate(hashes)).view(np.dtype((np.void, hashes[0].shape[1]))).ravel()
    repeated = np.ones(len(keys), dtype=bool)
    repeated[np.unique(keys, return_index=True)[1]] = False  # first occurrence of each hash stays
    return np.split(repeated, np.cumsum([len(h) for h in hashes])[:-1])


def _entry_info(setup: Setup, entry: str, kind: str, shards: list[dict], empty_files: list[str], dedup: bool) -> dict:
    for meta in shards:
        if finished(setup.root, entry, meta["name"], meta["key"], setup.dtype) is None:
            raise IncompleteDataError(f"shard {shard_files(setup.root, entry, meta['name'])[0]} is missing, truncated "
                                      f"or from other inputs; re-run the node that made it")
    repeated = _duplicates(setup, entry, shards) if shards else []
    final = []
    for meta, mask in zip(shards, repeated):
        if dedup and mask.any():
            name, key = f"{meta['name']}-dedup", digest(meta["key"], hashlib.sha256(np.packbits(mask)).hexdigest())
            meta = finished(setup.root, entry, name, key, setup.dtype) or write_subset(
                setup.root, entry, meta, ~mask, name, key, setup.dtype)
        final.append(meta)
    kept = [m for m in final if m["n_docs"]]
    duplicates = int(sum(mask.sum() for mask in repeated))
    return {"kind": kind, "n_docs": sum(m["n_docs"] for m in kept), "n_tokens": sum(m["n_tokens"] for m in kept),
            "n_chars": sum(m["n_chars"] for m in shards),
            "skipped_empty_documents": sum(m["skipped_empty"] for m in shards),
            "duplicate_documents": duplicates, "dropped_duplicate_documents": duplicates if dedup else 0,
            "empty_files": empty_files, "shards": [{k: m[k] for k in MANIFEST_SHARD_KEYS if k in m} for m in kept]}


def finalize(plan: Plan, setup: Setup, *, dedup: bool = False, num_nodes: int = 1) -> Path:
    """Check every input is done, count (and with ``dedup`` drop) duplicates, write the manifest."""
    inputs = plan.inputs
    records = [_load_record(setup, source) for source in inputs]
    missing = [i for i, (source, record) in enumerate(zip(inputs, records))
               if record is None or record["key"] != setup.input_key(source)]
    _check_tokenizer([records[i] for i in missing], setup)
    if missing:
        raise IncompleteDataError(_missing_message(inputs, missing, num_nodes))
    entries: dict[str, dict] = {}
    from_column: set[str] = set()
    unlabelled_empty = []
    for source, record in zip(inputs, records):
        kind = "instruction" if source.kind == "instruction" else "text"
        if source.entry is not None:
            entries.setdefault(source.entry, {"kind": kind, "shards": [], "empty_files": []})
            if record["empty_file"]:
                entries[source.entry]["empty_files"].append(source.location)
        elif record["empty_file"]:
            unlabelled_empty.append(source.location)
        for lang, metas in record["entries"].items():
            if source.entry is None and lang in entries and lang not in from_column:
                raise ValueError(f"language {lang!r} comes from LANG=PATH inputs and from the language column of "
                                 f"{source.location}; list all of a language's files one way")
            from_column.update([lang] if source.entry is None else [])
            entries.setdefault(lang, {"kind": kind, "shards": [], "empty_files": []})["shards"] += metas
    languages, empty_languages = {}, {}
    for entry, found in sorted(entries.items()):
        info = _entry_info(setup, entry, found["kind"], found["shards"], found["empty_files"], dedup)
        if info["shards"]:
            languages[entry] = info
        else:
            empty_languages[entry] = {"skipped_empty_documents": info["skipped_empty_documents"],
                                      "empty_files": info["empty_files"]}
    if not languages:
        raise ValueError(f"no language has any non-empty document (empty: {sorted(empty_languages)}); "
                         f"nothing to write to {setup.root}")
    manifest = {"version": FORMAT_VERSION, "tokenizer_sha256": setup.tokenizer_sha, "vocab_size": setup.vocab_size,
                "dtype": setup.dtype.name, "tokenizer_fingerprint": setup.tokenizer_fingerprint,
                "special_tokens": setup.special.roles(),
                "shard_documents": setup.shard_documents, "deduplicated": dedup,
                "languages": languages, "empty_languages": empty_languages,
                "empty_files_without_language": unlabelled_empty,
                "fingerprint": data_fingerprint(setup.tokenizer_sha, languages)}
    atomic_write(setup.root / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode())
    open_store(setup.root)  # every shard hashed once more against the manifest, then recorded: training need not
    return setup.root


def preprocess(plan: Plan, tokenizer_path: str | Path, output: str | Path, *,
               shard_documents: int = DEFAULT_SHARD_DOCUMENTS, num_proc: int | None = None, dedup: bool = False,
               progress: bool = True) -> Path:
    """Single node: tokenize every input, then finalize."""
    setup = Setup(Path(output), tokenizer_path, shard_documents, plan.options)
    run_node(plan, setup, num_proc=num_proc, progress=progress)
    return finalize(plan, setup, dedup=dedup)
