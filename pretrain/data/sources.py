"""Raw corpus files -> one ``datasets.Dataset`` of texts per language, with file-level checks first.

Supported: .jsonl/.json (a text column), .parquet (a text column), .txt (one document per line, or
per blank-line-separated paragraph). Languages come from ``lang=path`` specs or a language column.
Missing, unreadable or non-UTF-8 files are refused before ``datasets`` sees them, with the file
name and byte offset; zero-byte files are skipped and reported (an empty file is not an error).
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


@dataclass
class LanguageSource:
    lang: str
    dataset: datasets.Dataset | None  # None: the language has no non-empty file
    key: str  # identity of the inputs (paths, sizes, mtimes, options) for skip-if-done
    empty_files: list[str] = field(default_factory=list)


def parse_spec(spec: str) -> tuple[str | None, Path]:
    """``lang=path`` or a bare ``path`` (then rows need a language column)."""
    lang, sep, path = spec.partition("=")
    if sep and lang and "/" not in lang:
        return lang, Path(path)
    return None, Path(spec)


def expand(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in BUILDERS)
        if not files:
            raise FileNotFoundError(f"input directory {path} holds no {sorted(BUILDERS)} files")
        return files
    if not path.exists():
        raise FileNotFoundError(f"input file {path} does not exist")
    if path.suffix not in BUILDERS:
        raise ValueError(f"input file {path}: unsupported extension {path.suffix!r}; use one of {sorted(BUILDERS)}")
    return [path]


def check_file(path: Path) -> None:
    """Refuse unreadable files and invalid UTF-8 (text formats) with the file and byte offset."""
    if not os.access(path, os.R_OK):
        raise PermissionError(f"input file {path} is not readable")
    if BUILDERS[path.suffix] == "parquet":
        return  # Arrow validates UTF-8 in string columns itself
    if path.suffix == ".jsonl":
        return _check_jsonl(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise ValueError(f"input file {path} is not valid UTF-8 at byte {offset + err.start}: "
                                 f"{chunk[err.start:err.start + 8]!r}; re-encode it as UTF-8") from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValueError(f"input file {path} is not valid UTF-8: it ends inside a multi-byte character") from None


def _check_jsonl(path: Path) -> None:
    """One JSON object per line, UTF-8: a bad line is refused naming the file and the line."""
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"input file {path} is not valid UTF-8 at byte {offset + err.start} (line {number}): "
                                 f"{raw[err.start:err.start + 8]!r}; re-encode it as UTF-8") from None
            if not line.strip():
                raise ValueError(f"input file {path}:{number} is blank; JSON Lines holds one JSON object per "
                                 f"line: delete the blank line")
            try:
                value = json.loads(line)
            except ValueError as err:
                raise ValueError(f"input file {path}:{number} is not valid JSON ({err}); fix or delete the "
                                 f"line") from None
            if not isinstance(value, dict):
                raise ValueError(f"input file {path}:{number} holds a JSON {type(value).__name__}, not an object "
                                 f"with a text column; fix or delete the line")
            offset += len(raw)


def _load(files: list[Path], text_column: str, sample_by: str, cache_dir: str | None) -> datasets.Dataset:
    builders = {BUILDERS[f.suffix] for f in files}
    if len(builders) != 1:
        raise ValueError(f"inputs {[str(f) for f in files]} mix formats {sorted(builders)}; give one format per source")
    builder = builders.pop()
    kwargs = {"sample_by": sample_by} if builder == "text" else {}
    try:
        dataset = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train",
                                        cache_dir=cache_dir, **kwargs)
    except Exception as err:  # datasets raises many types; keep the original as the cause
        raise ValueError(f"could not read {[str(f) for f in files]} as {builder}: {err}") from err
    if text_column not in dataset.column_names:
        raise ValueError(f"inputs {[str(f) for f in files]} have no column {text_column!r} "
                         f"(columns: {dataset.column_names}); pass --text-column")
    return dataset


def _key(files: list[Path], *options: str) -> str:
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    digest.update("\0".join(options).encode())
    return digest.hexdigest()


def read_sources(specs: list[str], *, text_column: str = "text", lang_column: str | None = None,
                 sample_by: str = "line", cache_dir: str | None = None) -> list[LanguageSource]:
    """Specs (``lang=path`` or ``path`` with ``lang_column``) -> one LanguageSource per language, sorted."""
    by_lang: dict[str | None, list[Path]] = {}
    for spec in specs:
        lang, path = parse_spec(spec)
        if lang is None and lang_column is None:
            raise ValueError(f"input {spec!r} names no language: write lang=path or pass --lang-column")
        by_lang.setdefault(lang, []).extend(expand(path))
    sources = []
    for lang, files in by_lang.items():
        for f in files:
            check_file(f)
        present = [f for f in files if f.stat().st_size > 0]
        empty = [str(f) for f in files if f.stat().st_size == 0]
        key = _key(files, text_column, sample_by, str(lang_column))
        if lang is not None:
            dataset = _load(present, text_column, sample_by, cache_dir) if present else None
            sources.append(LanguageSource(lang, dataset, key, empty))
            continue
        if not present:
            raise ValueError(f"inputs {empty} are all empty files; there is no language column to read")
        table = _load(present, text_column, sample_by, cache_dir)
        if lang_column not in table.column_names:
            raise ValueError(f"inputs {[str(f) for f in present]} have no language column {lang_column!r} "
                             f"(columns: {table.column_names})")
        for name in sorted(set(table[lang_column])):
            subset = table.filter(lambda column, name=name: [v == name for v in column], batched=True,
                                  input_columns=lang_column)
            sources.append(LanguageSource(str(name), subset, f"{key}:{name}", empty))
    sources.sort(key=lambda s: s.lang)
    duplicates = {s.lang for s in sources if [t.lang for t in sources].count(s.lang) > 1}
    if duplicates:
        raise ValueError(f"language(s) {sorted(duplicates)} come from more than one source; "
                         f"list all of a language's files in one lang=path (a directory works)")
    return sources
