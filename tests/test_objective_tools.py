"""Around the strategies: one YAML per strategy, the statistics function and ``inspect --stats``, and
every new strategy through the trainer (a few steps each, one process; one on the DeepSpeed engine)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pretrain.__main__ import main
from pretrain.config import from_dict, load_yaml
from pretrain.objectives import STRATEGIES, GLMCollator, ObjectiveConfig, TextSample
from pretrain.objectives.stats import format_stats, objective_stats
from pretrain.tokens import SpecialTokens

ROOT = Path(__file__).resolve().parents[1]
S = SpecialTokens()


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_has_a_yaml_with_its_defaults(name):
    path = ROOT / "configs" / "objectives" / f"{name}.yaml"
    raw = load_yaml(path)
    assert set(raw) == {"objective"}, "an objective section to put into a run config"
    objective = from_dict(ObjectiveConfig, raw["objective"], f"{path}: objective")
    assert objective.strategy == name
    assert objective.section(name) == STRATEGIES[name].Config(), "the YAML documents the defaults"


def test_objective_stats_of_a_known_layout():
    # Causal on whole documents of 12 tokens: 11 predicted (all but cls), one span, Part B = 12 of 14.
    docs = {"de": np.r_[S.cls, np.arange(20, 30), S.eos], "zh": np.r_[S.cls, np.arange(30, 40), S.eos]}
    samples = [TextSample(i, [docs[lang]], language=lang) for i, lang in enumerate(["de", "zh", "de", "zh"])]
    collator = GLMCollator(ObjectiveConfig(strategy="causal"), S, seq_len=20, seed=0, global_batch_size=2)
    stats = objective_stats(collator, samples, batch_size=3)
    assert [(g["strategy"], g["language"], g["rows"]) for g in stats["groups"]] == [
        ("causal", "de", 2), ("causal", "zh", 2), ("causal", "all", 4)]
    group = stats["groups"][-1]
    assert group["masked_ratio"] == {"mean": 11 / 12, "p5": 11 / 12, "p95": 11 / 12}
    assert group["mean_span_length"] == 11 and group["spans_per_row"] == 1
    assert group["part_b_share"] == 12 / 14 and group["padding_fraction"] == 6 / 20
    assert group["overflow_rows"] == group["dropped_spans"] == 0
    assert stats["seq_len"] == 20 and "causal" in format_stats(stats)
    assert collator.stats["padding"] == 24 and collator.stats["positions"] == 80


def test_objective_stats_count_what_overflow_drops():
    collator = GLMCollator(ObjectiveConfig(strategy="token"), S, 64, seed=0, global_batch_size=1)
    full = [TextSample(i, [np.r_[S.cls, np.arange(10, 72), S.eos]]) for i in range(4)]  # no room for Part B
    group, = objective_stats(collator, full)["groups"]
    assert group["overflow_rows"] == 4 and group["dropped_spans"] > 0 and group["masked_ratio"]["mean"] == 0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stats")
    texts = {"en": [f"English document number {i}. It has two sentences, and some more words." for i in range(30)],
             "ru": [f"Русский документ номер {i}. В нём два предложения." for i in range(30)]}
    for lang, docs in texts.items():
        (folder / f"{lang}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    inputs = [arg for lang in texts for arg in ("--input", f"{lang}={folder / lang}.jsonl")]
    assert main(["tokenizer", "train", *inputs, "--vocab-size", "400", "--output", str(folder / "tok.json")]) == 0
    assert main(["preprocess", *inputs, "--tokenizer", str(folder / "tok.json"), "--output", str(folder / "data")]) == 0
    return folder / "data"


def test_inspect_stats(data_dir, capsys):
    capsys.readouterr()
    args = ["inspect", "--data", str(data_dir), "--seq-len", "64"]
    assert main([*args, "--stats", "40", "--json", "--strategy", "t5"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {(g["strategy"], g["language"]) for g in stats["groups"]} == {("t5", "en"), ("t5", "ru"), ("t5", "all")}
    assert all(0.1 < g["masked_ratio"]["mean"] < 0.25 for g in stats["groups"])
    assert main([*args, "--stats", "10", "--language", "ru", "--strategy", "ul2"]) == 0
    out = capsys.readouterr().out
    assert "masked" in out and "\nul2          ru " in out and "\nul2          en" not in out
    assert "(ru," in out.split("\nsample ")[1], "the sample shown is of the language asked for"
    assert main([*args, "--stats", "5", "--language", "xx"]) == 2
    assert "--language 'xx' is not in the data" in capsys.readouterr().err
    assert main([*args, "--strategy", "bert"]) == 2
    assert "'bert' is unknown" in capsys.readouterr().err


@pytest.fixture
def trainer(trainer_factory):
    """conftest's one-process trainer with a one-layer model."""
    return lambda run_dir, *overrides: trainer_factory(run_dir, "model.num_layers=1", *overrides)


def test_every_new_strategy_trains_in_a_mixture_and_evaluates(trainer, tmp_path):
    names = ["t5", "ul2", "fim", "prefix_lm", "mlm"]
    mixture = "{" + ", ".join(f"{n}: 1" for n in names) + "}"
    run = trainer(tmp_path, "objective.strategy=mixture", f"objective.mixture={mixture}",
                  "objective.mixture_level=sample", "train.global_batch_size=8", "train.micro_batch_size=4",
                  "train.max_steps=3", "eval.interval=3", "eval.objective={strategy: ul2}")
    batches = iter(run.s.loader)
    records = [run.train_step(batches) for _ in range(3)]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert {k.removeprefix("loss/") for r in records for k in r if k.startswith("loss/")} == set(names)
    assert math.isfinite(run.evaluate()["eval/loss/ul2"])


def test_a_new_strategy_trains_on_the_deepspeed_engine(trainer, tmp_path):
    run = trainer(tmp_path, "objective.strategy=t5", "parallel.engine=deepspeed", "train.max_steps=2")
    batches = iter(run.s.loader)
    assert all(math.isfinite(run.train_step(batches)["loss"]) for _ in range(2))
