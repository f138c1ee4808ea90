"""CLI: tokenizer train/show, preprocess, inspect, end to end through ``python -m pretrain``."""
import json

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
