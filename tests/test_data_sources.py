"""Source kinds: every file format, globs, language directories, remote (fsspec) URLs, save_to_disk
directories, ``datasets:`` dataset repositories; each reads the same documents, and mistakes are refused."""
import gzip
import importlib.util
import json
import unicodedata

import datasets
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretrain.data import prepare_embedded_corpus
from pretrain.data.preprocess import preprocess
from pretrain.data.sources import SourceOptions, read_sources
from pretrain.data.store import open_store, read_manifest
from pretrain.data.tokenizer import load_tokenizer

DOCS = ["Erste Zeile.", "Second line, with a comma", "Третья строка.", "第四行。"]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return prepare_embedded_corpus(tmp_path_factory.getbasetemp() / "data-cache") / "tokenizer.json"


def stored_texts(root, lang):
    store, tokenizer = open_store(root), load_tokenizer(root / "tokenizer.json")
    language = store.languages[lang]
    return [tokenizer.decode(language.document(d).tolist()) for d in range(language.n_docs)]


def build(plan, tokenizer_path, out, **kwargs):
    return preprocess(plan, tokenizer_path, out, progress=False, **kwargs)


def jsonl(docs, key="text"):
    return "".join(json.dumps({key: d}, ensure_ascii=False) + "\n" for d in docs)


def test_every_file_format_reads_the_same_documents(tokenizer_path, tmp_path):
    folder = tmp_path / "formats"
    folder.mkdir()
    (folder / "jl.jsonl").write_text(jsonl(DOCS), encoding="utf-8")
    (folder / "js.json").write_text(jsonl(DOCS), encoding="utf-8")
    (folder / "gz.jsonl.gz").write_bytes(gzip.compress(jsonl(DOCS).encode()))
    (folder / "tx.txt").write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    (folder / "cs.csv").write_text("text\n" + "".join(f'"{d}"\n' for d in DOCS), encoding="utf-8")
    pq.write_table(pa.table({"text": DOCS}), folder / "pq.parquet")
    schema = pa.schema([("text", pa.string())])
    with pa.OSFile(str(folder / "ar.arrow"), "wb") as sink, pa.ipc.new_stream(sink, schema) as out:
        out.write_table(pa.table({"text": DOCS}))
    root = build(read_sources([str(folder)]), tokenizer_path, tmp_path / "out")  # a directory of <lang>.<ext>
    manifest = read_manifest(root)
    assert sorted(manifest["languages"]) == ["ar", "cs", "gz", "jl", "js", "pq", "tx"]
    for lang in manifest["languages"]:
        assert stored_texts(root, lang) == [unicodedata.normalize("NFC", d) for d in DOCS], lang
    shas = {lang: info["shards"][0]["bin_sha256"] for lang, info in manifest["languages"].items()}
    assert len(set(shas.values())) == 1  # the same tokens whatever the format


def test_a_directory_maps_its_children_to_languages(tokenizer_path, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "fr").mkdir(parents=True)
    (corpus / "en.jsonl").write_text(jsonl(DOCS[:2]))
    (corpus / "fr" / "b.txt").write_text("deux\n")
    (corpus / "fr" / "a.txt").write_text("un\n")
    (corpus / ".cache.jsonl").write_text(jsonl(["hidden"]))
    (corpus / "fr" / ".git").mkdir()
    (corpus / "fr" / ".git" / "config.json").write_text("{}")
    (corpus / "README.md").write_text("not data")
    plan = read_sources([str(corpus)])
    assert [(s.entry, s.ordinal, s.location.rsplit("/", 2)[-2:]) for s in plan.inputs] == [
        ("en", 0, ["corpus", "en.jsonl"]), ("fr", 0, ["fr", "a.txt"]), ("fr", 1, ["fr", "b.txt"])]
    root = build(plan, tokenizer_path, tmp_path / "out")
    assert stored_texts(root, "fr") == ["un", "deux"]  # inputs in path order, each its own shards
    assert [s["name"] for s in read_manifest(root)["languages"]["fr"]["shards"]] == ["shard-00000-00000",
                                                                                     "shard-00001-00000"]


def test_globs_pick_matching_files_in_path_order(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.parquet"):
        (tmp_path / name).write_text("")
    plan = read_sources([f"en={tmp_path}/*.jsonl"])
    assert [s.location for s in plan.inputs] == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    with pytest.raises(FileNotFoundError, match=r"input pattern .*\*.txt matches no"):
        read_sources([f"en={tmp_path}/*.txt"])


def test_remote_urls_read_like_local_files(tokenizer_path, tmp_path):
    memory = fsspec.filesystem("memory")
    local = tmp_path / "local"
    local.mkdir()
    for lang, docs in (("en", DOCS[:3]), ("de", DOCS[1:])):
        memory.pipe(f"/remote-corpus/{lang}.jsonl", jsonl(docs).encode())
        (local / f"{lang}.jsonl").write_text(jsonl(docs), encoding="utf-8")
    remote = build(read_sources(["memory://remote-corpus"]), tokenizer_path, tmp_path / "remote")
    same = build(read_sources([str(local)]), tokenizer_path, tmp_path / "same")
    assert read_manifest(remote)["fingerprint"] == read_manifest(same)["fingerprint"]
    globbed = read_sources(["en=memory://remote-corpus/*.jsonl"])
    assert [s.location for s in globbed.inputs] == ["memory:///remote-corpus/de.jsonl",
                                                    "memory:///remote-corpus/en.jsonl"]
    before = read_sources(["memory://remote-corpus"]).inputs
    memory.pipe("/remote-corpus/en.jsonl", jsonl(DOCS).encode())  # replaced upstream: a new identity, redone
    after = read_sources(["memory://remote-corpus"]).inputs
    assert before[0].identity == after[0].identity and before[1].identity != after[1].identity
    memory.rm("/remote-corpus", recursive=True)


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed: nothing to refuse")
def test_a_missing_protocol_package_names_the_extra():
    with pytest.raises(ValueError, match=r"s3://bucket/en.jsonl: .*s3fs.*pip install 'glm-pretrain\[s3\]'"):
        read_sources(["en=s3://bucket/en.jsonl"])


def test_a_saved_dataset_directory_is_an_input(tokenizer_path, tmp_path):
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "saved"), num_shards=2)
    plan = read_sources([f"ru={tmp_path / 'saved'}"])
    assert [s.builder for s in plan.inputs] == ["arrow", "arrow"]
    expected = [unicodedata.normalize("NFC", d) for d in DOCS]
    assert stored_texts(build(plan, tokenizer_path, tmp_path / "out"), "ru") == expected
    with pytest.raises(ValueError, match=r"saved' names no language: write LANG="):
        read_sources([str(tmp_path / "saved")])  # its state.json is not a language
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS})}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(ValueError, match=r"dict is a saved DatasetDict; give one split's directory"):
        read_sources([f"ru={tmp_path / 'dict'}"])


def test_a_datasets_repository_is_streamed_file_by_file(tokenizer_path, tmp_path):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    for index, docs in enumerate((DOCS[:2], DOCS[2:])):
        pq.write_table(pa.table({"text": docs}), repo / "data" / f"train-{index:05d}-of-00002.parquet")
    pq.write_table(pa.table({"text": ["held-out text"]}), repo / "data" / "test-00000-of-00001.parquet")
    plan = read_sources([f"en=datasets:{repo}"])  # the Hub layout, resolved by datasets (no network)
    assert [s.location.rsplit("/", 1)[1] for s in plan.inputs] == ["train-00000-of-00002.parquet",
                                                                   "train-00001-of-00002.parquet"]
    root = build(plan, tokenizer_path, tmp_path / "out")
    assert stored_texts(root, "en") == [unicodedata.normalize("NFC", d) for d in DOCS]
    assert len(read_sources([f"en=datasets:{repo}?split=test"]).inputs) == 1
    with pytest.raises(ValueError, match=r"no data files for split 'valid' \(splits: \['test', 'train'\]\)"):
        read_sources([f"en=datasets:{repo}?split=valid"])
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['subset'\]"):
        read_sources([f"en=datasets:{repo}?subset=x"])


def test_source_mistakes_are_refused_with_the_fix(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "en.jsonl").write_text(jsonl(["a"]))
    with pytest.raises(ValueError, match=r"notes.md: unsupported extension"):
        read_sources([f"en={tmp_path / 'notes.md'}"])
    with pytest.raises(ValueError, match=r"names no language: write LANG=.*en.jsonl, pass --lang-column"):
        read_sources([str(tmp_path / "en.jsonl")])
    with pytest.raises(ValueError, match=r"is listed twice for 'en'"):
        read_sources([f"en={tmp_path / 'en.jsonl'}", f"en={tmp_path}/*.jsonl"])
    with pytest.raises(ValueError, match=r"'en' is both a language and an instruction source"):
        read_sources([f"en={tmp_path / 'en.jsonl'}"], instruct=[f"en={tmp_path / 'en.jsonl'}"])
    (tmp_path / "bad lang.jsonl").write_text(jsonl(["a"]))
    with pytest.raises(ValueError, match=r"'bad lang' is not a language name"):
        read_sources([str(tmp_path)])
    assert read_sources([str(tmp_path / "en.jsonl")], options=SourceOptions(lang_column="lang")).inputs[0].entry is None
