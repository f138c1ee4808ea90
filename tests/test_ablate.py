"""`python -m pretrain ablate` (a sweep of tiny trainer runs, resumable, one summary table) and
`python -m pretrain bench` (runner for bench/ scripts)."""
import json
import statistics
from pathlib import Path

import pytest
import yaml

from pretrain.__main__ import main as cli
from pretrain.cli.ablate import MARKER

COMMON_EVAL = {"strategy": "document"}  # a yardstick neither variant trains on


def write_sweep(directory: Path, cache: Path, variants: dict, eval_objective: dict | None = COMMON_EVAL) -> Path:
    base = {
        "model": {"preset": "glm-tiny"},
        "objective": {"strategy": "glm"},
        "data": {"corpus": "embedded", "cache_dir": str(cache), "num_workers": 0},
        "train": {"max_steps": 2, "global_batch_size": 2, "micro_batch_size": 2, "seq_len": 64, "lr": 3e-3},
        "checkpoint": {"interval": 0, "keep": 1},
        "eval": {"interval": 2, "batches": 1, **({"objective": eval_objective} if eval_objective else {})},
        "metrics": {"log_interval": 1, "tensorboard": False},
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "base.yaml").write_text(yaml.safe_dump(base))
    path = directory / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "variants": variants}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from pretrain.data.corpus import prepare_embedded_corpus
    path = tmp_path_factory.getbasetemp() / "train-corpus"  # shared with the trainer tests
    prepare_embedded_corpus(path)
    return path


@pytest.fixture(scope="module")
def sweep_out(tmp_path_factory, cache) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ablate")
    sweep = write_sweep(root, cache, {"token": [], "causal": ["objective.strategy=causal"]})
    out = root / "out"
    assert cli(["ablate", "--sweep", str(sweep), "--out", str(out)]) == 0
    return sweep, out


def table_rows(summary: str) -> list[list[str]]:
    lines = [line for line in summary.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_sweep_summarizes_each_variant_from_its_metrics(sweep_out):
    _, out = sweep_out
    summary = (out / "summary.md").read_text()
    header = [line for line in summary.splitlines() if line.startswith("|")][0]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert columns == ["variant", "step", "train loss (own objective)", "eval step", "eval loss", "document",
                       "tokens/s", "wall s"]
    assert summary.startswith("# Ablation sweep\n\nComparable across variants")
    rows = table_rows(summary)
    assert [row[0] for row in rows] == ["token", "causal"]
    for row in rows:
        records = [json.loads(line) for line in (out / row[0] / "metrics.jsonl").read_text().splitlines()]
        last = records[-1]
        assert last["step"] == 2 and row[1] == "2" and row[3] == "2"
        assert row[2] == f"{last['loss']:.4f}" and row[4] == f"{last['eval/loss']:.4f}"
        # scored under the common objective, not the training one
        assert row[5] == f"{last['eval/loss/document']:.4f}"
        assert [key for key in last if key.startswith("eval/loss")] == ["eval/loss", "eval/loss/document"]
        assert float(row[6]) == pytest.approx(statistics.median(r["tokens_per_s"] for r in records), abs=0.5)
        marker = json.loads((out / row[0] / MARKER).read_text())
        assert float(row[7]) == pytest.approx(marker["wall_s"], abs=0.05) and marker["wall_s"] > 0
        assert marker["finished"]
        assert marker["overrides"] == ([] if row[0] == "token" else ["objective.strategy=causal"])
    causal_train = json.loads((out / "causal" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "loss/causal" in causal_train and "loss/token" not in causal_train


def test_finished_variants_are_skipped_on_rerun(sweep_out, capsys):
    sweep, out = sweep_out
    before = {name: (out / name / "metrics.jsonl").read_text() for name in ("token", "causal")}
    summary = (out / "summary.md").read_text()
    assert cli(["ablate", "--sweep", str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already finished, skipped") == 2
    assert {name: (out / name / "metrics.jsonl").read_text() for name in before} == before
    assert (out / "summary.md").read_text() == summary  # the recorded wall times, not the skip's


def test_changed_overrides_of_a_started_variant_are_refused(sweep_out, capsys):
    sweep, out = sweep_out
    assert cli(["ablate", "--sweep", str(sweep), "--out", str(out), "--only", "token", "train.lr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "variant 'token'" in err and "train.lr=1e-3" in err and "another --out" in err


def test_unknown_override_key_fails_before_any_run(tmp_path, capsys):
    sweep = write_sweep(tmp_path, tmp_path / "cache",
                        {"good": [], "bad": ["objective.token.mask_ratio=0.2", "objective.maskratio=0.3"]})
    assert cli(["ablate", "--sweep", str(sweep), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "variant 'bad'" in err and "maskratio" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_bad_eval_objective_fails_at_load_time(tmp_path):
    from pretrain.config import ConfigError
    from pretrain.train.config import load_config
    sweep = write_sweep(tmp_path, tmp_path / "cache", {"a": []})
    with pytest.raises(ConfigError, match=r"base.yaml: eval.objective: unknown key\(s\) \['maskratio'\]"):
        load_config(sweep.parent / "base.yaml", ["eval.objective.maskratio=0.3"])


def test_summary_says_when_eval_losses_are_not_comparable(tmp_path):
    from pretrain.cli.ablate import load_sweep, summary_markdown
    sweep = write_sweep(tmp_path, tmp_path / "cache", {"token": [], "causal": ["objective.strategy=causal"]},
                        eval_objective=None)
    _, variants = load_sweep(sweep, tmp_path / "out", [])
    assert "NOT comparable" in summary_markdown(variants, [])
    sweep = write_sweep(tmp_path, tmp_path / "cache", {
        "a": [], "b": ["eval.objective.token.mask_ratio=0.3"], "c": ["train.seed=1"], "d": ["data.alpha=1.0"],
        "same-task": ["eval.objective.layout=legacy", "data.num_workers=2", "train.lr=1e-3"]})
    _, variants = load_sweep(sweep, tmp_path / "out", [])
    assert "NOT comparable across variants: variants ['b', 'c', 'd'] are evaluated on other samples" in \
        summary_markdown(variants, [])
    assert summary_markdown([variants[0], variants[-1]], []).startswith("# Ablation sweep\n\nComparable")


def test_bench_rejects_unknown_name(capsys):
    assert cli(["bench", "no-such-bench"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'no-such-bench'" in err
    for name in ("attention", "collator", "data", "train_step"):
        assert name in err


def test_bench_outside_a_source_checkout_says_so(tmp_path, monkeypatch, capsys):
    from pretrain.cli import bench as bench_cli
    monkeypatch.setattr(bench_cli, "BENCH_DIR", tmp_path / "installed" / "bench")
    assert cli(["bench", "collator"]) == 2
    assert "source checkout" in capsys.readouterr().err
