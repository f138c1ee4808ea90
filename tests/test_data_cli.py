"""CLI: tokenizer train/show, preprocess, inspect, end to end through ``python -m pretrain``."""
import json
import re

import pytest

from pretrain.__main__ import main

TEXTS = {"en": [f"English document number {i}. It has two sentences." for i in range(7)],
         "ar": [f"هذه وثيقة عربية رقم {i}. فيها جملتان." for i in range(6)]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    for lang, docs in TEXTS.items():
        (folder / f"{lang}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    (folder / "empty.jsonl").write_text("")
    return folder


def test_tokenizer_train_and_show(workspace, capsys):
    output = str(workspace / "tok.json")
    assert main(["tokenizer", "train", "--embedded", "--vocab-size", "600", "--output", output]) == 0
    assert "vocab 640" in capsys.readouterr().out
    assert main(["tokenizer", "show", str(workspace / "tok.json"), "--text", "a [MASK] b"]) == 0
    out = capsys.readouterr().out
    assert "    3  [MASK]\n" in out and "    5  [gMASK]\n" in out
    assert "'M', 'A', 'S', 'K'" in out  # literal [MASK] in text is encoded as text


def test_preprocess_then_inspect(workspace, capsys):
    main(["tokenizer", "train", "--input", f"en={workspace / 'en.jsonl'}", "--input", f"ar={workspace / 'ar.jsonl'}",
          "--vocab-size", "400", "--output", str(workspace / "small.json")])
    inputs = [arg for lang in (*TEXTS, "empty") for arg in ("--input", f"{lang}={workspace / lang}.jsonl")]
    assert main(["preprocess", *inputs, "--tokenizer", str(workspace / "small.json"),
                 "--output", str(workspace / "data")]) == 0
    out = capsys.readouterr().out
    assert "en: 7 documents" in out and "empty: EMPTY, skipped" in out
    assert main(["inspect", "--data", str(workspace / "data"), "--seq-len", "64", "--sample-id", "1"]) == 0
    out = capsys.readouterr().out
    assert "tokens/char" in out and "ar" in out and "Part A (context" in out and "| Part B (generated" in out
    assert "<sop>" in out and "[MASK]" in out


def test_preprocess_reports_bad_input_clearly(workspace, capsys):
    missing = f"en={workspace / 'missing.jsonl'}"
    code = main(["preprocess", "--input", missing, "--tokenizer", "t.json", "--output", "o"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("preprocess: input file ") and err.endswith("missing.jsonl does not exist\n")


def test_preprocess_on_two_nodes_then_finalize(workspace, tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "corpus"  # a directory of <lang>.jsonl: --input DIR alone
    corpus.mkdir()
    for lang, docs in TEXTS.items():
        (corpus / f"{lang}.jsonl").write_text((workspace / f"{lang}.jsonl").read_text() * 2)  # every document twice
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps({"q": f"Q{i}?", "a": f"A{i}."}) + "\n" for i in range(5)))
    common = ["preprocess", "--input", str(corpus), "--instruct", f"sft={tmp_path / 'sft.jsonl'}", "--prompt-field",
              "q", "--response-field", "a", "--tokenizer", str(workspace / "tok.json"),
              "--output", str(tmp_path / "out")]
    assert main([*common, "--num-nodes", "2", "--node-rank", "0"]) == 0
    assert "node 0 of 2: its share is done (1 of the 3 inputs); when every node" in capsys.readouterr().out
    assert main([*common, "--finalize", "--num-nodes", "2"]) == 2  # refused in one line, naming the share
    assert re.fullmatch(r"preprocess: 2 of 3 inputs .* node 1 of 2: 2 input\(s\) \(.*en.jsonl, .*sft.jsonl\); .*\n",
                        capsys.readouterr().err)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")  # the second node as a Slurm array task
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert main(common) == 0
    capsys.readouterr()
    assert main([*common, "--finalize", "--dedup"]) == 0
    out = capsys.readouterr().out
    assert "en: 7 documents, " in out and "7 exact duplicates, dropped" in out
    assert "sft: 5 documents (instruction)" in out
