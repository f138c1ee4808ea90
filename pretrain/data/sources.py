"""Source specs -> an ordered plan of ``Input`` (one file, dataset file or Megatron pair each): the unit
that preprocess streams, skips when done and hands to a node.

A spec is ``[ENTRY=]LOCATION``; ENTRY names a language (``--input``) or an instruction source
(``--instruct``), and each entry is one item of the training mixture. LOCATION is any of:

* a local file, directory or glob, or the same behind an fsspec URL (``s3://``, ``gs://``, ``hf://``,
  ``memory://``, ...); formats by extension: .jsonl/.json, .parquet, .txt, .arrow, .csv (a
  .gz/.bz2/.xz suffix is decompressed while streaming), and Megatron pairs (.idx + .bin);
* a ``Dataset.save_to_disk`` directory (its Arrow files);
* ``datasets:NAME_OR_DIR[?config=C&split=S&revision=R]``: a Hub dataset or a local dataset repository,
  resolved by ``datasets`` to its data files (split ``train`` by default), each streamed on its own.

Without ENTRY, a directory maps its children to languages by name (``en.jsonl``, ``de.parquet``, ``fr/``),
or, with ``--lang-column``, every row names its own language. Rows are read with
``datasets.load_dataset(builder, data_files=[file], streaming=True)``, so memory stays bounded and
remote files are never copied whole. Local text files are checked for UTF-8 first (file and byte
offset in the error); zero-byte files are skipped and reported.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qs

from pretrain.data.instruct import InstructionFormat
from pretrain.data.remote import display, filesystem, identity, is_compressed, is_local

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".arrow": "arrow",
            ".csv": "csv", ".idx": "megatron", ".bin": "megatron"}
KINDS = ("text", "instruction", "megatron")
COLUMN_GROUP = "_by-column"  # the inputs whose rows name their language (entries cannot start with "_")
ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
DATASETS_PREFIX = "datasets:"


@dataclass(frozen=True)
class SourceOptions:
    text_column: str = "text"
    lang_column: str | None = None  # inputs without ENTRY=: the column naming each row's language
    sample_by: str = "line"  # .txt: one document per line, per blank-line paragraph, or per file
    instruction: InstructionFormat = InstructionFormat()
    storage_options: Mapping = field(default_factory=dict)  # passed to fsspec (endpoint, credentials)


@dataclass(frozen=True)
class Input:
    entry: str | None  # the mixture entry; None: the language column decides per row
    kind: str          # text | instruction | megatron
    ordinal: int       # position among its group's inputs: its shards are <entry>/shard-<ordinal>-<chunk>
    location: str      # local path or URL (Megatron: the prefix)
    builder: str       # datasets packaged builder, or "megatron"
    size: int          # bytes; 0 = an empty file, skipped and reported
    identity: str      # what the skip-if-done keys hash: location, size, version, reading options
    rows: Any = field(default=None, compare=False, repr=False)  # in-memory datasets.Dataset (built in code)

    @property
    def group(self) -> str:
        return self.entry if self.entry is not None else COLUMN_GROUP


@dataclass(frozen=True)
class Plan:
    """Every input, in the order that names their shards, and how to read them."""
    inputs: tuple[Input, ...]
    options: SourceOptions = SourceOptions()


def builder_of(name: str) -> str | None:
    base = name.rsplit(".", 1)[0] if is_compressed(name) else name
    return BUILDERS.get(posixpath.splitext(base)[1])


def parse_spec(spec: str) -> tuple[str | None, str]:
    """``entry=location`` or a bare ``location``."""
    entry, sep, location = spec.partition("=")
    if sep and ENTRY_NAME.fullmatch(entry):
        return entry, location
    return None, spec


def check_file(fs, path: str) -> None:
    """Refuse what datasets would report vaguely: invalid UTF-8 in a text file (file and byte offset), a
    JSON Lines line that is blank, not JSON or not an object (file and line)."""
    if path.endswith(".jsonl"):
        return _check_jsonl(fs, path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with fs.open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise ValueError(f"input file {display(fs, path)} is not valid UTF-8 at byte {offset + err.start}: "
                                 f"{chunk[err.start:err.start + 8]!r}; re-encode it as UTF-8") from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValueError(f"input file {display(fs, path)} is not valid UTF-8: it ends inside a multi-byte "
                             f"character") from None


def _check_jsonl(fs, path: str) -> None:
    """One JSON object per line, UTF-8: a bad line is refused naming the file and the line."""
    where, offset = display(fs, path), 0
    with fs.open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"input file {where} is not valid UTF-8 at byte {offset + err.start} (line {number}): "
                                 f"{raw[err.start:err.start + 8]!r}; re-encode it as UTF-8") from None
            if not line.strip():
                raise ValueError(f"input file {where}:{number} is blank; JSON Lines holds one JSON object per line: "
                                 f"delete the blank line")
            try:
                value = json.loads(line)
            except ValueError as err:
                raise ValueError(f"input file {where}:{number} is not valid JSON ({err}); fix or delete the "
                                 f"line") from None
            if not isinstance(value, dict):
                raise ValueError(f"input file {where}:{number} holds a JSON {type(value).__name__}, not an object "
                                 f"with the record's columns; fix or delete the line")
            offset += len(raw)


def _files(fs, path: str, location: str) -> list[tuple[str, str]]:
    """(path, builder) of every data file a location names, sorted; Megatron pairs by prefix."""
    if fs.isdir(path):
        if fs.isfile(posixpath.join(path, "dataset_dict.json")):
            raise ValueError(f"input {location} is a saved DatasetDict; give one split's directory "
                             f"({location}/<split>)")
        if fs.isfile(posixpath.join(path, "state.json")):  # Dataset.save_to_disk
            with fs.open(posixpath.join(path, "state.json")) as handle:
                state = json.load(handle)
            return [(posixpath.join(path, f["filename"]), "arrow") for f in state["_data_files"]]
        found = [f for f in fs.find(path) if builder_of(f)
                 and not any(part.startswith(".") for part in posixpath.relpath(f, path).split("/"))]
    elif any(c in path for c in "*?["):
        found = [f for f in fs.glob(path) if fs.isfile(f) and builder_of(f)]
        if not found:
            raise FileNotFoundError(f"input pattern {location} matches no {sorted(BUILDERS)} file")
    elif fs.isfile(path):
        if builder_of(path) is None:
            raise ValueError(f"input file {location}: unsupported extension; use one of {sorted(BUILDERS)}")
        found = [path]
    else:
        raise FileNotFoundError(f"input file {location} does not exist")
    files = {}
    for f in sorted(found):
        builder = builder_of(f)
        files[posixpath.splitext(f)[0] if builder == "megatron" else f] = builder
    if not files:
        raise FileNotFoundError(f"input directory {location} holds no {sorted(BUILDERS)} files")
    return list(files.items())


def _by_name(fs, path: str, location: str) -> list[tuple[str, str, str]]:
    """A directory whose children are languages: ``en.jsonl``, ``en.idx``/``en.bin``, ``de/``."""
    saved = any(fs.isfile(posixpath.join(path, name)) for name in ("state.json", "dataset_dict.json"))
    if saved or not fs.isdir(path):
        raise ValueError(f"input {location!r} names no language: write LANG={location}, pass --lang-column, "
                         f"or give a directory of <lang>.<ext> files or <lang>/ folders")
    entries = []
    for child in sorted(fs.ls(path, detail=False)):
        name = posixpath.basename(child.rstrip("/"))
        if name.startswith((".", "_")) or not (fs.isdir(child) or builder_of(name)):
            continue
        lang = name.split(".", 1)[0]
        if not ENTRY_NAME.fullmatch(lang):
            raise ValueError(f"input {display(fs, child)}: {lang!r} is not a language name; rename it or "
                             f"write LANG=PATH")
        entries += [(lang, f, b) for f, b in _files(fs, child, display(fs, child))]
    if not entries:
        raise FileNotFoundError(f"input directory {location} holds no <lang>.<ext> files or <lang>/ folders")
    return list(dict.fromkeys(entries))  # en.idx and en.bin name the same pair


def _dataset_files(spec: str, storage_options: Mapping) -> tuple[list[str], str]:
    """``NAME_OR_DIR?config=&split=&revision=`` -> (data file URLs of the split, builder)."""
    import datasets
    name, _, query = spec.partition("?")
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = sorted(set(params) - {"config", "split", "revision"})
    if unknown:
        raise ValueError(f"input {DATASETS_PREFIX}{spec}: unknown option(s) {unknown}; use config, split, revision")
    split = params.get("split", "train")
    try:
        builder = datasets.load_dataset_builder(name, params.get("config"), revision=params.get("revision"),
                                                storage_options=dict(storage_options))
    except Exception as err:  # datasets raises many types; keep the original as the cause
        raise ValueError(f"input {DATASETS_PREFIX}{spec}: could not resolve the dataset: {err}") from err
    files = (builder.config.data_files or {}).get(split)
    if not files:
        raise ValueError(f"input {DATASETS_PREFIX}{spec}: no data files for split {split!r} "
                         f"(splits: {sorted(builder.config.data_files or {})}); add ?split=NAME")
    if builder.name not in set(BUILDERS.values()) - {"megatron"}:
        raise ValueError(f"input {DATASETS_PREFIX}{spec}: its files are read by the {builder.name!r} builder; "
                         f"supported: {sorted(set(BUILDERS.values()) - {'megatron'})}")
    return list(files), builder.name


def _expand(spec: str, options: SourceOptions) -> list[tuple[str | None, str, str]]:
    """(entry, location, builder) of every input file a spec names."""
    entry, location = parse_spec(spec)
    if location.startswith(DATASETS_PREFIX):
        files, builder = _dataset_files(location[len(DATASETS_PREFIX):], options.storage_options)
        if entry is None and options.lang_column is None:
            raise ValueError(f"input {spec!r} names no language: write LANG={location} or pass --lang-column")
        return [(entry, f, builder) for f in files]
    fs, path = filesystem(location, options.storage_options)
    if entry is None and options.lang_column is None:
        return [(lang, display(fs, f), b) for lang, f, b in _by_name(fs, path, location)]
    return [(entry, display(fs, f), b) for f, b in _files(fs, path, location)]


def _options_key(entry: str | None, kind: str, builder: str, options: SourceOptions) -> dict:
    """The reading options an input's tokens depend on (and no others, so changing one redoes only those)."""
    if kind == "megatron":
        return {}
    reading = {"sample_by": options.sample_by} if builder == "text" else {}
    if kind == "instruction":
        return {**reading, "instruction": options.instruction.describe()}
    columns = {"text_column": options.text_column, **({"lang_column": options.lang_column} if entry is None else {})}
    return {**reading, **columns}


def _input(entry: str | None, kind: str, ordinal: int, location: str, builder: str,
           options: SourceOptions) -> Input:
    fs, path = filesystem(location, options.storage_options)
    if builder == "megatron":
        (size, version), (_, idx_version) = identity(fs, path + ".bin"), identity(fs, path + ".idx")
        version = f"{version}/{idx_version}"
    else:
        size, version = identity(fs, path)
    key = json.dumps([location, size, version, kind, builder, _options_key(entry, kind, builder, options)])
    return Input(entry, kind, ordinal, location, builder, size, key)


def read_sources(specs: list[str], *, instruct: list[str] = (), options: SourceOptions = SourceOptions()) -> Plan:
    """The plan: every input of every spec, grouped by entry (sorted; the language-column group last),
    in spec order then path order inside a group."""
    options.instruction.validate()
    groups: dict[str, list[tuple[str | None, str, str, str]]] = {}
    kinds: dict[str, str] = {}
    for kind, group_specs in (("text", specs), ("instruction", instruct)):
        for spec in group_specs:
            for entry, location, builder in _expand(spec, options):
                if kind == "instruction" and entry is None:
                    raise ValueError(f"instruction input {spec!r} needs a name: write NAME={spec}")
                if builder == "megatron" and (kind == "instruction" or entry is None):
                    raise ValueError(f"input {location}: a Megatron dataset holds plain tokens; give it a language "
                                     f"(LANG=PATH) with --input")
                name = entry if entry is not None else COLUMN_GROUP
                if kinds.setdefault(name, kind) != kind:
                    raise ValueError(f"entry {name!r} is both a language and an instruction source; rename one")
                if any(location == known[1] for known in groups.get(name, [])):
                    raise ValueError(f"input {location} is listed twice for {name!r}")
                source_kind = "megatron" if builder == "megatron" else kind
                groups.setdefault(name, []).append((entry, location, builder, source_kind))
    inputs = []
    for name in sorted(groups, key=lambda g: (g == COLUMN_GROUP, g)):
        inputs += [_input(entry, kind, ordinal, location, builder, options)
                   for ordinal, (entry, location, builder, kind) in enumerate(groups[name])]
    return Plan(tuple(inputs), options)


def dataset_input(entry: str, rows, key: str, kind: str = "text") -> Input:
    """An in-memory ``datasets.Dataset`` as an input (corpora built in code); ``key`` is its identity."""
    return Input(entry, kind, 0, f"<in-memory {entry}>", "memory", len(rows), json.dumps([key, kind]), rows)


def read_rows(source: Input, options: SourceOptions, batch_size: int = 1000) -> Iterator[dict[str, list]]:
    """The rows of one non-Megatron input as column batches, streamed."""
    if source.rows is not None:
        yield from source.rows.iter(batch_size=batch_size)
        return
    import datasets
    fs, path = filesystem(source.location, options.storage_options)
    if is_local(fs) and source.builder in ("json", "text", "csv") and not is_compressed(path):
        check_file(fs, path)
    kwargs = {"sample_by": options.sample_by} if source.builder == "text" else {}
    try:
        stream = datasets.load_dataset(source.builder, data_files=[source.location], split="train", streaming=True,
                                       storage_options=dict(options.storage_options), **kwargs)
        yield from stream.iter(batch_size=batch_size)
    except Exception as err:  # datasets and pyarrow raise many types; keep the original as the cause
        if source.location in str(err):
            raise
        raise ValueError(f"could not read {source.location} as {source.builder}: {err}") from err


def text_rows(source: Input, options: SourceOptions, batch: dict, where: str) -> tuple[list[str], list[list[str]]]:
    """(language of each row, its text as a one-element list, or [] for an empty document)."""
    for column in (options.text_column, *([options.lang_column] if source.entry is None else [])):
        if column not in batch:
            flag = "--text-column" if column == options.text_column else "--lang-column"
            raise ValueError(f"{where} has no column {column!r} (columns: {sorted(batch)}); pass {flag}")
    texts = batch[options.text_column]
    langs = [source.entry] * len(texts) if source.entry is not None else [str(v) for v in batch[options.lang_column]]
    for lang in set(langs) - {source.entry}:
        if not ENTRY_NAME.fullmatch(lang):
            raise ValueError(f"{where}: language column value {lang!r} is not a language name "
                             f"(letters, digits, '_', '.', '-')")
    return langs, [[text] if isinstance(text, str) and text.strip() else [] for text in texts]


def sample_texts(plan: Plan, max_rows: int) -> dict[str, list[str]]:
    """Up to ``max_rows`` non-empty texts per language from the plan's text inputs (tokenizer training)."""
    texts: dict[str, list[str]] = {}
    for source in plan.inputs:
        if source.kind != "text" or source.size == 0 and source.rows is None:
            continue
        for batch in read_rows(source, plan.options):
            langs, docs = text_rows(source, plan.options, batch, f"input {source.location}")
            for lang, doc in zip(langs, docs):
                if doc and len(texts.setdefault(lang, [])) < max_rows:
                    texts[lang].append(doc[0])
            if source.entry is not None and len(texts.get(source.entry, [])) >= max_rows:
                break
    return texts


def digest(*parts: object) -> str:
    """sha256 of the parts (an input's identity, tokenizer, chunking, version, ...): the skip-if-done keys."""
    return hashlib.sha256(json.dumps([str(part) for part in parts]).encode()).hexdigest()
