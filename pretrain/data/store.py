"""Token store: per-language shards of flat tokens + document offsets, listed in a checksummed manifest.

Layout of a preprocessed directory::

    manifest.json            languages -> shards with counts and sha256, tokenizer sha and tokenizer_fingerprint
                             (pretrain.data.tokenizer), data fingerprint
    tokenizer.json
    <entry>/shard-00000-00000.bin   flat token ids (uint16 if the vocabulary fits, else uint32)
    <entry>/shard-00000-00000.idx.npy   int64 document offsets into the .bin, n_docs + 1 entries from 0
    <entry>/shard-00000-00000.prompt.npy   instruction entries: int32 prompt tokens of each document
    <entry>/shard-00000-00000.json  the shard's own metadata; written last, so its presence marks completion
    verified.json            .bin files already hashed against the manifest (VerificationRecord)

An entry is a language or an instruction source (manifest ``kind``: text | instruction), one item of
the mixture. Shard ``shard-<input>-<chunk>`` holds rows [chunk * shard_documents, ...) of the entry's
input number <input> (preprocess.py). An instruction document is prompt tokens then response tokens.

Checks: the manifest, tokenizer hash, every .bin size and every .idx/.prompt.npy hash at each start (cheap);
each .bin hash and token range once, at preprocess or first use, then again only if its (size, mtime, inode)
changes.
Documents are stored bare; the loader frames each one as [cls] + tokens + [eos]. Memory maps are
opened lazily in each process and never pickled (DataLoader workers open their own).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pretrain.data.tokenizer import atomic_write, file_sha256

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VERIFIED = "verified.json"  # VerificationRecord: .bin files already hashed, and their stamps
TOKENIZER = "tokenizer.json"
FORMAT_VERSION = 2  # 2: shards per (input, chunk), entry kinds, instruction prompt lengths


class CorruptDataError(ValueError):
    """A preprocessed file that does not match its manifest (truncated, modified, out-of-vocabulary)."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def shard_files(root: Path, lang: str, name: str) -> tuple[Path, Path, Path]:
    folder = root / lang
    return folder / f"{name}.bin", folder / f"{name}.idx.npy", folder / f"{name}.json"


def prompt_file(root: Path, lang: str, name: str) -> Path:
    return root / lang / f"{name}.prompt.npy"


def data_fingerprint(tokenizer_sha256: str, languages: dict) -> str:
    """Hash of everything that defines the token streams: tokenizer, entry kinds, every shard's content hash."""
    shards = {lang: [info.get("kind", "text")] + [
        (s["name"], s["n_docs"], s["n_tokens"], s["bin_sha256"], s["idx_sha256"], s.get("prompt_sha256", ""))
        for s in info["shards"]] for lang, info in sorted(languages.items())}
    payload = json.dumps([FORMAT_VERSION, tokenizer_sha256, shards], sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


@dataclass
class LanguageStore:
    lang: str
    bins: list[Path]
    dtype: np.dtype
    offsets: np.ndarray      # [n_docs + 1] int64 token offsets over the language's shards, concatenated
    shard_doc_start: np.ndarray  # [n_shards + 1] first document of each shard
    prompt_lengths: np.ndarray | None = None  # [n_docs] instruction entries: prompt tokens of each document
    _maps: dict = field(default_factory=dict, repr=False)

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def document(self, doc: int) -> np.ndarray:
        shard = int(np.searchsorted(self.shard_doc_start, doc, side="right")) - 1
        tokens = self._maps.get(shard)
        if tokens is None:
            tokens = self._maps[shard] = np.memmap(self.bins[shard], dtype=self.dtype, mode="r")
        base = self.offsets[self.shard_doc_start[shard]]
        return tokens[self.offsets[doc] - base:self.offsets[doc + 1] - base]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}


@dataclass
class TokenStore:
    root: Path
    manifest: dict
    languages: dict[str, LanguageStore]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def tokenizer_sha256(self) -> str:
        return self.manifest["tokenizer_sha256"]


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {root} is not a preprocessed data directory "
                                f"(make one with `python -m pretrain preprocess`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptDataError(f"{path} is not valid JSON ({err}); re-run preprocess") from err
    if manifest.get("version") != FORMAT_VERSION:
        raise CorruptDataError(f"{path} has format version {manifest.get('version')!r}, this code reads "
                               f"{FORMAT_VERSION}; re-run preprocess")
    return manifest


def file_stamp(path: Path) -> list[int]:
    """(size, mtime, inode): what a rewrite, an edit or a copy of the file changes."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


@dataclass
class VerificationRecord:
    """The .bin files hashed against the manifest, each with its stamp at the time: a later start whose
    stamp matches skips the hash (size and .idx are checked at every start; .idx files are small).
    Read from the first of ``paths`` that holds one, written to the first writable one."""
    paths: list[Path]
    entries: dict[str, dict] = field(default_factory=dict)
    changed: bool = False

    @classmethod
    def load(cls, paths: list[Path]) -> "VerificationRecord":
        for path in paths:
            try:
                return cls(paths, json.loads(path.read_text(encoding="utf-8"))["shards"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # absent, unreadable or torn: the shards are hashed again and the record rewritten
        return cls(paths)

    def covers(self, key: str, path: Path, sha256: str) -> bool:
        entry = self.entries.get(key)
        return entry is not None and entry.get("sha256") == sha256 and entry.get("stamp") == file_stamp(path)

    def add(self, key: str, path: Path, sha256: str) -> None:
        self.entries[key] = {"sha256": sha256, "stamp": file_stamp(path)}
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        payload = json.dumps({"shards": self.entries}, indent=1, sort_keys=True).encode()
        for path in self.paths:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, payload)
                return
            except OSError:
                continue
        logger.warning("could not record the verified shards in %s; they are hashed again at the next start",
                       " or ".join(map(str, self.paths)))


def _open_shard(root: Path, lang: str, shard: dict, dtype: np.dtype, vocab_size: int,
                record: VerificationRecord | None) -> np.ndarray:
    """The shard's document offsets, after its checks: files present, .bin size, .idx hash and structure at
    every start; the .bin hash and token range once (``record``; None: never)."""
    bin_path, idx_path, _ = shard_files(root, lang, shard["name"])
    for path in (bin_path, idx_path):
        if not path.is_file():
            raise CorruptDataError(f"shard file {path} listed in {root / MANIFEST} is missing; re-run preprocess")
    expected = shard["n_tokens"] * dtype.itemsize
    if bin_path.stat().st_size != expected:
        raise CorruptDataError(f"shard file {bin_path} has {bin_path.stat().st_size} bytes, the manifest says "
                               f"{expected} ({shard['n_tokens']} tokens): truncated or replaced; re-run preprocess")
    idx_bytes = idx_path.read_bytes()
    if hashlib.sha256(idx_bytes).hexdigest() != shard["idx_sha256"]:
        raise CorruptDataError(f"shard file {idx_path} does not match its sha256 in {root / MANIFEST}: "
                               f"modified or corrupted; re-run preprocess")
    key = f"{lang}/{bin_path.name}"
    if record is not None and not record.covers(key, bin_path, shard["bin_sha256"]):
        if file_sha256(bin_path) != shard["bin_sha256"]:
            raise CorruptDataError(f"shard file {bin_path} does not match its sha256 in {root / MANIFEST}: "
                                   f"modified or corrupted; re-run preprocess")
        top = int(np.memmap(bin_path, dtype=dtype, mode="r").max()) if shard["n_tokens"] else -1
        if top >= vocab_size:
            raise CorruptDataError(f"shard file {bin_path} holds token id {top}, outside the vocabulary "
                                   f"[0, {vocab_size}) of {root / TOKENIZER}")
        record.add(key, bin_path, shard["bin_sha256"])
    try:
        offsets = np.load(io.BytesIO(idx_bytes))
    except ValueError as err:
        raise CorruptDataError(f"shard file {idx_path} is not a valid .npy offsets file: {err}") from err
    if (offsets.shape != (shard["n_docs"] + 1,) or offsets[0] != 0 or offsets[-1] != shard["n_tokens"]
            or np.any(np.diff(offsets) < 0)):
        raise CorruptDataError(f"shard file {idx_path}: offsets do not describe {shard['n_docs']} documents "
                               f"over {shard['n_tokens']} tokens; re-run preprocess")
    return offsets.astype(np.int64)


def _open_prompts(root: Path, lang: str, shard: dict, offsets: np.ndarray) -> np.ndarray:
    """An instruction shard's prompt lengths: one per document, each leaving a non-empty response. Hashed at
    every start, like the .idx (4 bytes a document)."""
    path = prompt_file(root, lang, shard["name"])
    if not path.is_file():
        raise CorruptDataError(f"shard file {path} listed in {root / MANIFEST} is missing; re-run preprocess")
    prompt_bytes = path.read_bytes()
    if hashlib.sha256(prompt_bytes).hexdigest() != shard["prompt_sha256"]:
        raise CorruptDataError(f"shard file {path} does not match its sha256 in {root / MANIFEST}: "
                               f"modified or corrupted; re-run preprocess")
    try:
        prompts = np.load(io.BytesIO(prompt_bytes))
    except ValueError as err:
        raise CorruptDataError(f"shard file {path} is not a valid .npy prompt-lengths file: {err}") from err
    if prompts.shape != (shard["n_docs"],) or np.any(prompts < 0) or np.any(prompts >= np.diff(offsets)):
        raise CorruptDataError(f"shard file {path}: prompt lengths do not fit the {shard['n_docs']} documents "
                               f"of its shard; re-run preprocess")
    return prompts.astype(np.int64)


def open_store(root: str | Path, verify_checksums: bool = True, record_dir: str | Path | None = None) -> TokenStore:
    """Open a preprocessed directory. ``verify_checksums``: hash each .bin file once, recorded in
    ``<root>/verified.json`` (or ``<record_dir>/<fingerprint>.json`` when root is read-only)."""
    root = Path(root)
    manifest = read_manifest(root)
    tokenizer_path = root / TOKENIZER
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"{tokenizer_path} is missing; the shards cannot be decoded without it")
    if file_sha256(tokenizer_path) != manifest["tokenizer_sha256"]:
        raise CorruptDataError(f"{tokenizer_path} differs from the tokenizer the shards were made with "
                               f"(sha256 in {root / MANIFEST}); re-run preprocess with this tokenizer")
    if data_fingerprint(manifest["tokenizer_sha256"], manifest["languages"]) != manifest["fingerprint"]:
        raise CorruptDataError(f"{root / MANIFEST}: fingerprint does not match its shard list; the file was edited")
    dtype = np.dtype(manifest["dtype"])
    record_paths = [root / VERIFIED, *([Path(record_dir) / f"{manifest['fingerprint']}.json"] if record_dir else [])]
    record = VerificationRecord.load(record_paths) if verify_checksums else None
    languages = {}
    for lang, info in sorted(manifest["languages"].items()):
        offsets, doc_starts, bins, tokens, prompts = [np.zeros(1, np.int64)], [0], [], 0, []
        instruction = info.get("kind") == "instruction"
        for shard in info["shards"]:
            local = _open_shard(root, lang, shard, dtype, manifest["vocab_size"], record)
            if instruction:
                prompts.append(_open_prompts(root, lang, shard, local))
            offsets.append(local[1:] + tokens)
            tokens += int(local[-1])
            doc_starts.append(doc_starts[-1] + shard["n_docs"])
            bins.append(shard_files(root, lang, shard["name"])[0])
        languages[lang] = LanguageStore(lang, bins, dtype, np.concatenate(offsets), np.array(doc_starts),
                                        np.concatenate(prompts) if instruction else None)
    if record is not None:
        record.save()
    return TokenStore(root, manifest, languages)
