"""Errors a person can act on: one line naming file/key/value and the fix, printed once (rank 0), exit
code 2, the traceback only with --debug; every float finite; JSON lines named by file and line; a
torn last line of metrics.jsonl dropped instead of blocking the resume."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.__main__ import main
from pretrain.cli._errors import run_verb
from pretrain.config import ConfigError
from pretrain.data.sources import read_rows, read_sources
from pretrain.train.config import load_config
from pretrain.train.metrics import MetricsWriter, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def refuse(args):
    raise ConfigError("data.path=/nope does not exist; give a preprocessed directory")


def test_a_refusal_is_one_line_on_rank_zero_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("PRETRAIN_DEBUG", raising=False)
    assert run_verb("train", refuse, argparse.Namespace(debug=False)) == 2
    assert capsys.readouterr().err == "train: data.path=/nope does not exist; give a preprocessed directory\n"
    monkeypatch.setenv("RANK", "1")
    assert run_verb("train", refuse, argparse.Namespace(debug=False)) == 2
    assert capsys.readouterr().err == ""  # printed once, by rank 0


def test_debug_shows_the_traceback_and_bugs_keep_theirs(monkeypatch):
    monkeypatch.delenv("PRETRAIN_DEBUG", raising=False)
    with pytest.raises(ConfigError):
        run_verb("train", refuse, argparse.Namespace(debug=True))
    monkeypatch.setenv("PRETRAIN_DEBUG", "1")
    with pytest.raises(ConfigError):
        run_verb("train", refuse, argparse.Namespace(debug=False))
    monkeypatch.delenv("PRETRAIN_DEBUG")

    def bug(args):
        raise KeyError("a bug is not a user mistake")
    with pytest.raises(KeyError):
        run_verb("train", bug, argparse.Namespace(debug=False))


@pytest.mark.parametrize("override, key", [
    ("train.lr=.nan", "train.lr"), ("train.lr=inf", "train.lr"), ("train.betas=[0.9, .nan]", "train.betas[1]"),
    ("data.alpha=.inf", "data.alpha"), ("data.weights={en: .nan}", "data.weights.en"),
    ("model.dropout=.nan", "model.dropout"), ("model.rope_theta=.inf", "model.rope_theta"),
    ("objective.token.mask_ratio=-.inf", "objective.token.mask_ratio"),
    ("metrics.peak_tflops=.inf", "metrics.peak_tflops"),
])
def test_every_float_must_be_finite(override, key):
    with pytest.raises(ConfigError, match=r"is not a finite number; give a finite value") as err:
        load_config(SMOKE, [override])
    assert f"{SMOKE}: {key}" in str(err.value)


def test_train_cli_refuses_a_nonfinite_lr_in_one_line(capsys, monkeypatch):
    monkeypatch.delenv("PRETRAIN_DEBUG", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert main(["train", "--config", str(SMOKE), "train.lr=.nan"]) == 2
    assert capsys.readouterr().err == f"train: {SMOKE}: train.lr: nan is not a finite number; give a finite value\n"


@pytest.mark.parametrize("lines, message", [
    (['{"text": "a"}', "", '{"text": "b"}'], r"bad\.jsonl:2 is blank"),
    (['{"text": "a"}', '{"text": "b"}', '{"text": '], r"bad\.jsonl:3 is not valid JSON"),
    (['{"text": "a"}', '["b"]'], r"bad\.jsonl:2 holds a JSON list, not an object"),
])
def test_bad_jsonl_input_names_file_and_line(tmp_path, lines, message):
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    plan = read_sources([f"en={tmp_path / 'bad.jsonl'}"])  # checked where it is read: the node tokenizing it
    with pytest.raises(ValueError, match=message):
        list(read_rows(plan.inputs[0], plan.options))


def test_torn_last_metrics_line_is_dropped_and_the_resume_continues(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')
    assert [r["step"] for r in read_jsonl(metrics)] == [1, 2, 3]
    writer = MetricsWriter(tmp_path, enabled=True, tensorboard=False, resume_step=2)
    writer.log({"step": 3, "loss": 0.5})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_jsonl(metrics)] == [(1, 1.0), (2, 0.5), (3, 0.5)]


def test_a_malformed_metrics_line_is_named(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2 is not a JSON object: 'not json'; delete that line"):
        MetricsWriter(tmp_path, enabled=True, tensorboard=False, resume_step=1)


@pytest.mark.slow
def test_a_refusal_under_torchrun_is_printed_once(tmp_path):
    from pretrain.cli.ablate import train_command
    from pretrain.data.corpus import prepare_embedded_corpus
    cache = tmp_path.parent / "train-corpus"
    prepare_embedded_corpus(cache)
    command = train_command(SMOKE, [f"run.dir={tmp_path}", f"data.cache_dir={cache}", "data.num_workers=0",
                                    "checkpoint.resume_from=3", "train.seq_len=64"], nproc=2)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    refusals = [line for line in output.splitlines() if line.startswith("train: ")]
    assert refusals == [f"train: checkpoint.resume_from=3: {tmp_path / 'checkpoints'} has no complete checkpoint of "
                        f"step 3 (it has none); give one of those, latest, or none"], output[-3000:]
    assert result.returncode != 0 and "exitcode  : 2" in output and "Traceback" not in output.split("torchrun")[0]


def test_unset_data_is_refused_and_a_run_logs_its_data(trainer_factory, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.delenv("PRETRAIN_DEBUG", raising=False)
    unset = ["data.corpus=null", "parallel.tp=1", f"run.dir={tmp_path / 'unset'}"]
    assert main(["train", "--config", str(SMOKE), *unset]) == 2
    assert capsys.readouterr().err.startswith("train: data.path is not set: give a preprocessed directory")
    with caplog.at_level("INFO", logger="pretrain.train.loop"):
        trainer_factory(tmp_path / "run")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("data "))
    assert "(fingerprint " in line and "tokenizer sha256 " in line and "(vocabulary 2048), mixture ar 0." in line
