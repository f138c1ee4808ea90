"""Preprocess + store: formats, empty input counted, duplicates, worker independence, skip/resume, refusals."""
import builtins
import json
import shutil
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretrain.data import prepare_embedded_corpus
from pretrain.data.preprocess import preprocess
from pretrain.data.sources import SourceOptions, read_sources
from pretrain.data.store import VERIFIED, CorruptDataError, data_fingerprint, open_store, read_manifest
from pretrain.data.tokenizer import file_sha256, load_tokenizer

EN = ["The quick brown fox.", "", "   ", "Jumps over [MASK] the lazy dog.", "Line three of English."]
DE = ["Alles klar.", "", "Ein zweiter Satz.", "Noch einer, der dritte.", "Und der vierte."]
FR = ["Bonjour tout le monde.", "Deuxième phrase française.", "Troisième."]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return prepare_embedded_corpus(tmp_path_factory.getbasetemp() / "data-cache") / "tokenizer.json"


@pytest.fixture
def raw(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "en.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in EN), encoding="utf-8")
    (folder / "de.txt").write_text("\n".join(DE) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": FR}), folder / "fr.parquet")
    (folder / "xx.jsonl").write_text("")  # empty language: an empty file
    (folder / "yy.jsonl").write_text(json.dumps({"text": " "}) + "\n")  # empty language: empty documents
    return folder


def specs(folder):
    return [f"{p.stem}={p}" for p in sorted(folder.iterdir())]


def run(folder, tokenizer_path, out, **kwargs):
    return preprocess(read_sources(specs(folder)), tokenizer_path, out, progress=False, **kwargs)


def stored_texts(root, lang):
    store, tokenizer = open_store(root), load_tokenizer(root / "tokenizer.json")
    language = store.languages[lang]
    return [tokenizer.decode(language.document(d).tolist()) for d in range(language.n_docs)]


def test_formats_counts_and_empty_input(raw, tokenizer_path, tmp_path):
    root = run(raw, tokenizer_path, tmp_path / "out")
    manifest = read_manifest(root)
    assert sorted(manifest["languages"]) == ["de", "en", "fr"]
    assert manifest["languages"]["en"]["skipped_empty_documents"] == 2
    assert manifest["languages"]["de"]["skipped_empty_documents"] == 1
    assert manifest["empty_languages"] == {
        "xx": {"skipped_empty_documents": 0, "empty_files": [str(raw / "xx.jsonl")]},
        "yy": {"skipped_empty_documents": 1, "empty_files": []}}
    for lang, texts in (("en", EN), ("de", DE), ("fr", FR)):
        assert stored_texts(root, lang) == [unicodedata.normalize("NFC", t) for t in texts if t.strip()]
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == 2048


def test_language_column_input(tokenizer_path, tmp_path):
    rows = [{"lang": "b", "text": "first b"}, {"lang": "a", "text": "first a"}, {"lang": "b", "text": "second b"}]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sources = read_sources([str(tmp_path / "mixed.jsonl")], options=SourceOptions(lang_column="lang"))
    root = preprocess(sources, tokenizer_path, tmp_path / "out", shard_documents=1, progress=False)
    assert stored_texts(root, "a") == ["first a"] and stored_texts(root, "b") == ["first b", "second b"]
    # chunks count each language's own rows; the column inputs' shards are named apart from LANG= inputs'
    assert [s["name"] for s in read_manifest(root)["languages"]["b"]["shards"]] == ["shard-c00000-00000",
                                                                                     "shard-c00000-00001"]


def test_a_language_from_both_a_column_and_lang_path_is_refused(tokenizer_path, tmp_path):
    (tmp_path / "mixed.jsonl").write_text(json.dumps({"lang": "en", "text": "hi"}) + "\n")
    (tmp_path / "en.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    plan = read_sources([f"en={tmp_path / 'en.jsonl'}", str(tmp_path / "mixed.jsonl")],
                        options=SourceOptions(lang_column="lang"))
    with pytest.raises(ValueError, match=r"language 'en' comes from LANG=PATH inputs and from the language column"):
        preprocess(plan, tokenizer_path, tmp_path / "out", progress=False)


def test_exact_duplicates_are_counted_and_dropped_with_dedup(tokenizer_path, tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["one", "two", "one", "three"]))
    (tmp_path / "b.txt").write_text("two\nfour\none\n")  # repeats across files and shards count too
    plan = read_sources([f"en={tmp_path / 'a.jsonl'}", f"en={tmp_path / 'b.txt'}"])
    kept = preprocess(plan, tokenizer_path, tmp_path / "keep", shard_documents=2, progress=False)
    info = read_manifest(kept)["languages"]["en"]
    assert (info["duplicate_documents"], info["dropped_duplicate_documents"]) == (3, 0)
    assert stored_texts(kept, "en") == ["one", "two", "one", "three", "two", "four", "one"]
    dropped = preprocess(plan, tokenizer_path, tmp_path / "drop", shard_documents=2, dedup=True, progress=False)
    info = read_manifest(dropped)["languages"]["en"]
    assert (info["duplicate_documents"], info["dropped_duplicate_documents"], info["n_docs"]) == (3, 3, 4)
    assert stored_texts(dropped, "en") == ["one", "two", "three", "four"]  # the first occurrence stays
    assert [s["name"] for s in info["shards"]] == ["shard-00000-00000", "shard-00000-00001-dedup",
                                                   "shard-00001-00000-dedup"]


def tree(root):
    """Every file's bytes, but the machine's own record of what it hashed (file stamps: inode, mtime)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != VERIFIED}


def test_output_does_not_depend_on_worker_count(raw, tokenizer_path, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    one = run(raw, tokenizer_path, tmp_path / "p1", shard_documents=2)
    two = run(raw, tokenizer_path, tmp_path / "p2", shard_documents=2, num_proc=2)
    assert len(read_manifest(one)["languages"]["en"]["shards"]) == 3  # rows 0-1, 2-3, 4
    assert tree(one) == tree(two)  # every file, records and manifest included


def test_rerun_skips_finished_shards_and_redoes_an_interrupted_one(raw, tokenizer_path, tmp_path):
    root = run(raw, tokenizer_path, tmp_path / "out", shard_documents=2)
    fingerprint = read_manifest(root)["fingerprint"]
    done = {p: p.stat().st_mtime_ns for p in (root / "de").iterdir() if p.name.startswith("shard-00000-00000")}
    # interrupted while writing shard 1: its .json (written last) is missing, its .bin half written, a
    # temporary file is left, and the input's record (written after its shards) is missing
    (root / "de" / "shard-00000-00001.json").unlink()
    (root / "de" / "shard-00000-00001.bin").write_bytes(b"\0\0")
    (root / "de" / ".shard-00000-00001.bin.tmp1234").write_bytes(b"\0")
    (root / ".inputs" / "de" / "00000.json").unlink()
    writing = root / "en" / ".shard-00000-00000.bin.tmp77-other"  # another node's shard being written right now
    writing.write_bytes(b"\0")
    rerun = run(raw, tokenizer_path, root, shard_documents=2)
    assert read_manifest(rerun)["fingerprint"] == fingerprint
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in done.items())  # finished shard skipped
    assert stored_texts(rerun, "de") == [t for t in DE if t.strip()]
    assert list(root.rglob(".*.tmp*")) == [writing]  # this input's leftovers go, nothing else


def test_missing_and_unreadable_inputs_are_refused(raw, tokenizer_path, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        read_sources([f"en={tmp_path / 'nope.jsonl'}"])
    real_open, target = builtins.open, str(raw / "en.jsonl")

    def denied(file, *args, **kwargs):  # tests run as root, where chmod does not deny; EACCES as the OS raises it
        if str(file) == target:
            raise PermissionError(13, "Permission denied", target)
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", denied)
    with pytest.raises(PermissionError, match="Permission denied: .*en.jsonl"):
        preprocess(read_sources([f"en={target}"]), tokenizer_path, tmp_path / "out", progress=False)


def test_invalid_utf8_is_refused_with_file_and_offset(tokenizer_path, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("good line\n".encode() + b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"bad.txt is not valid UTF-8 at byte 13"):
        preprocess(read_sources([f"fr={bad}"]), tokenizer_path, tmp_path / "out", progress=False)


def test_missing_text_column_is_refused(tokenizer_path, tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps({"body": "hi"}) + "\n")
    with pytest.raises(ValueError, match=r"x.jsonl \(rows from 0\) has no column 'text' \(columns: \['body'\]\)"):
        preprocess(read_sources([f"en={tmp_path / 'x.jsonl'}"]), tokenizer_path, tmp_path / "out", progress=False)


@pytest.fixture
def processed(raw, tokenizer_path, tmp_path):
    return run(raw, tokenizer_path, tmp_path / "out")


def test_truncated_shard_is_refused_naming_the_file(processed):
    path = processed / "en" / "shard-00000-00000.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(CorruptDataError, match=r"en/shard-00000-00000.bin has \d+ bytes.*truncated"):
        open_store(processed)


def test_checksum_mismatch_is_refused_naming_the_file(processed):
    path = processed / "de" / "shard-00000-00000.bin"
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match=r"de/shard-00000-00000.bin does not match its sha256"):
        open_store(processed)
    open_store(processed, verify_checksums=False)  # sizes still check out: only hashing finds it


def test_token_ids_outside_the_vocabulary_are_refused(processed):
    path = processed / "fr" / "shard-00000-00000.bin"
    tokens = np.fromfile(path, dtype=np.uint16)
    tokens[1] = 5000  # vocab is 2048; keep every checksum consistent so only the range check can fail
    tokens.tofile(path)
    manifest = read_manifest(processed)
    manifest["languages"]["fr"]["shards"][0]["bin_sha256"] = file_sha256(path)
    manifest["fingerprint"] = data_fingerprint(manifest["tokenizer_sha256"], manifest["languages"])
    (processed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptDataError, match=r"fr/shard-00000-00000.bin holds token id 5000, outside the vocabulary"):
        open_store(processed)


def test_replaced_tokenizer_or_missing_manifest_is_refused(processed, tmp_path):
    tokenizer = processed / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"<|reserved_0|>"', '"<|reserved_x|>"', 1) + " ")
    with pytest.raises(CorruptDataError, match="differs from the tokenizer the shards were made with"):
        open_store(processed)
    shutil.rmtree(processed / "en")
    (processed / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json does not exist.*not a preprocessed data directory"):
        open_store(processed)
