"""Megatron indexed datasets (.bin/.idx, MMapIndexedDataset format) imported without re-tokenizing: the same
shards as tokenizing the text, document boundaries kept, local or remote, and every format fault refused."""
import json
import struct

import fsspec
import numpy as np
import pytest

from pretrain.data import prepare_embedded_corpus
from pretrain.data.megatron import MegatronDataset
from pretrain.data.preprocess import preprocess
from pretrain.data.sources import read_sources
from pretrain.data.store import open_store, read_manifest
from pretrain.data.tokenizer import load_tokenizer

TEXTS = ["First document. It has two sentences.", "Second one.", "Le troisième document. Deux phrases.", "Ω"]
CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4, np.dtype(np.int64): 5, np.dtype(np.float32): 7}


def write_megatron(prefix, documents, dtype=np.uint16):
    """Megatron-LM's IndexedDatasetBuilder output: ``documents`` is a list of documents, each a list of
    sequences (token lists); header, int32 lengths, int64 byte pointers, int64 document indices."""
    dtype = np.dtype(dtype)
    sequences = [np.asarray(s, dtype=dtype) for doc in documents for s in doc]
    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64) * dtype.itemsize]).astype(np.int64)
    doc_idx = np.concatenate([[0], np.cumsum([len(doc) for doc in documents])]).astype(np.int64)
    with open(f"{prefix}.bin", "wb") as out:
        for s in sequences:
            out.write(s.tobytes())
    with open(f"{prefix}.idx", "wb") as out:
        out.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", CODES[dtype]))
        out.write(struct.pack("<Q", len(sequences)) + struct.pack("<Q", len(doc_idx)))
        out.write(lengths.tobytes() + pointers[:len(sequences)].tobytes() + doc_idx.tobytes())


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return prepare_embedded_corpus(tmp_path_factory.getbasetemp() / "data-cache") / "tokenizer.json"


@pytest.fixture(scope="module")
def megatron_docs(tokenizer_path):
    """The texts tokenized as Megatron's preprocess_data.py does: split into sentences, --append-eod."""
    tokenizer, eod = load_tokenizer(tokenizer_path), 1  # <|endoftext|>: the embedded tokenizer's eos
    assert tokenizer.token_to_id("<|endoftext|>") == eod
    docs = []
    for text in TEXTS:
        sentences = [s + ("." if s and not s.endswith(".") and ". " in text else "") for s in text.split(". ")]
        ids = [tokenizer.encode(s if i == 0 else " " + s, add_special_tokens=False).ids
               for i, s in enumerate(sentences)]
        docs.append(ids[:-1] + [ids[-1] + [eod]])
    return docs


def stored(root, lang):
    language = open_store(root).languages[lang]
    return [language.document(d).tolist() for d in range(language.n_docs)]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_an_import_keeps_documents_and_equals_tokenizing_the_text(tokenizer_path, megatron_docs, tmp_path, dtype):
    write_megatron(tmp_path / "en_text_document", megatron_docs, dtype)
    root = preprocess(read_sources([f"en={tmp_path / 'en_text_document.bin'}"]), tokenizer_path, tmp_path / "out",
                      progress=False)
    expected = [[t for s in doc for t in s][:-1] for doc in megatron_docs]  # the eod goes: the loader adds eos
    assert stored(root, "en") == expected
    (tmp_path / "en.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    text = preprocess(read_sources([f"en={tmp_path / 'en.jsonl'}"]), tokenizer_path, tmp_path / "text", progress=False)
    assert read_manifest(root)["fingerprint"] == read_manifest(text)["fingerprint"]  # the very same shards


def test_megatron_pairs_in_a_language_directory_and_behind_a_url(tokenizer_path, megatron_docs, tmp_path):
    (tmp_path / "corpus").mkdir()
    write_megatron(tmp_path / "corpus" / "en", megatron_docs)
    write_megatron(tmp_path / "corpus" / "de", megatron_docs[:2])
    plan = read_sources([str(tmp_path / "corpus")])
    assert [(s.entry, s.kind, s.builder) for s in plan.inputs] == [("de", "megatron", "megatron"),
                                                                   ("en", "megatron", "megatron")]
    local = preprocess(plan, tokenizer_path, tmp_path / "local", progress=False)
    memory = fsspec.filesystem("memory")
    for path in (tmp_path / "corpus").iterdir():
        memory.pipe(f"/megatron/{path.name}", path.read_bytes())
    remote = preprocess(read_sources(["memory://megatron"]), tokenizer_path, tmp_path / "remote", progress=False)
    memory.rm("/megatron", recursive=True)
    assert read_manifest(remote)["fingerprint"] == read_manifest(local)["fingerprint"]
    assert MegatronDataset(str(tmp_path / "corpus" / "en")).n_docs == len(megatron_docs)


def test_ids_outside_the_vocabulary_are_refused_naming_the_file(tokenizer_path, tmp_path):
    write_megatron(tmp_path / "other", [[[5, 6]], [[7, 5000, 8]]])  # made with a 50k-token tokenizer
    with pytest.raises(ValueError, match=r"other.idx: document 1 holds token id 5000, outside the vocabulary "
                                         r"\[0, 2048\) of the given tokenizer"):
        preprocess(read_sources([f"en={tmp_path / 'other.idx'}"]), tokenizer_path, tmp_path / "out", progress=False)


def test_files_that_break_the_format_are_refused(tmp_path):
    write_megatron(tmp_path / "ok", [[[5, 6]], [[7], [8, 9]]])
    idx, data = (tmp_path / "ok.idx").read_bytes(), (tmp_path / "ok.bin").read_bytes()

    def refused(name, idx_bytes, bin_bytes, pattern):
        (tmp_path / f"{name}.idx").write_bytes(idx_bytes)
        if bin_bytes is not None:
            (tmp_path / f"{name}.bin").write_bytes(bin_bytes)
        with pytest.raises((ValueError, FileNotFoundError), match=pattern):
            MegatronDataset(str(tmp_path / name))
    refused("magic", b"NOTANIDX\x00" + idx[9:], data, r"magic.idx is not a Megatron index file")
    refused("version", idx[:9] + struct.pack("<Q", 2) + idx[17:], data, r"index version 2")
    refused("floats", idx[:17] + struct.pack("<B", 7) + idx[18:], data, r"dtype code 7 is not an integer type")
    refused("short", idx[:-8], data, r"short.idx has 86 bytes; 3 sequences and 3 document indices need 94")
    refused("nobin", idx, None, r"nobin.bin is missing")
    refused("cut", idx, data[:-2], r"cut.idx: .* the .bin holds 8 bytes: the pair does not match")
