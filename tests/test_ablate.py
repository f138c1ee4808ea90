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
    """Two variants x two seeds, 3 steps with eval.interval 2: the last eval is the final one (step 3)."""
    root = tmp_path_factory.mktemp("ablate")
    sweep = write_sweep(root, cache, {"token": [], "causal": ["objective.strategy=causal"]})
    out = root / "out"
    assert cli(["ablate", "--sweep", str(sweep), "--out", str(out), "--seeds", "2", "--stats-rows", "16",
                "train.max_steps=3"]) == 0
    return sweep, out


def table(summary: str, first_column: str) -> list[list[str]]:
    """The Markdown table whose header starts with ``first_column``: header, then rows."""
    lines = summary.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [rows[0], *rows[2:]]


def mean_cell(values: list[float], fmt: str = "{:.4f}") -> str:
    from scipy import stats
    half = stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(half)}"


def test_sweep_summarizes_each_variant_over_its_seeds(sweep_out):
    _, out = sweep_out
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Ablation sweep\n\nComparable across variants")
    header, *rows = table(summary, "variant")
    assert header == ["variant", "seeds", "step", "train loss (own objective)", "eval step", "eval loss", "document",
                      "tokens/s", "wall s"]
    assert [row[0] for row in rows] == ["token", "causal"]
    for row in rows:
        runs = {seed: [json.loads(line) for line in (out / row[0] / f"seed{seed}" / "metrics.jsonl").read_text()
                       .splitlines()] for seed in (0, 1)}
        finals = [records[-1] for records in runs.values()]
        # the run ends with an eval at its last step although 3 is not a multiple of eval.interval=2
        assert all(f["step"] == 3 and "eval/loss" in f for f in finals)
        assert [r["step"] for r in runs[0] if "eval/loss" in r] == [2, 3]
        assert row[1:3] == ["2", "3"] and row[4] == "3"
        assert row[3] == mean_cell([f["loss"] for f in finals])
        assert row[5] == mean_cell([f["eval/loss"] for f in finals])
        assert row[6] == mean_cell([f["eval/loss/document"] for f in finals])  # the common objective
        assert [key for key in finals[0] if key.startswith("eval/loss")] == ["eval/loss", "eval/loss/document"]
        speeds = [statistics.median(r["tokens_per_s"] for r in records) for records in runs.values()]
        assert row[7] == mean_cell(speeds, "{:.0f}")
        for seed in (0, 1):
            marker = json.loads((out / row[0] / f"seed{seed}" / MARKER).read_text())
            assert marker["finished"] and marker["wall_s"] > 0
            assert marker["overrides"] == [*([] if row[0] == "token" else ["objective.strategy=causal"]),
                                           "train.max_steps=3", f"train.seed={seed}"]
    token = {seed: json.loads((out / "token" / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()[0])
             for seed in (0, 1)}
    assert token[0]["loss"] != token[1]["loss"]  # the seeds train differently
    causal_train = json.loads((out / "causal" / "seed0" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "loss/causal" in causal_train and "loss/token" not in causal_train


def test_summary_compares_with_the_reference_and_shows_statistics_and_plot(sweep_out):
    _, out = sweep_out
    summary = (out / "summary.md").read_text()
    header, *rows = table(summary, "variant | test")
    assert header == ["variant", "test", "eval loss", "document"]
    assert [row[:2] for row in rows] == [["causal", "paired t"]]  # same seeds, same eval set
    header, *rows = table(summary, "variant | objective")
    assert header[2:] == ["rows", "masked ratio (p5-p95)", "span length", "spans/row", "Part-B share", "padding",
                          "dropped spans"]
    assert [row[:3] for row in rows] == [["token", "glm", "16"], ["causal", "causal", "16"]]
    assert 0.1 < float(rows[0][3].split()[0]) < 0.2 and float(rows[1][3].split()[0]) > 0.6
    assert "![eval loss vs tokens](eval_loss.png)" in summary
    assert (out / "eval_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_finished_runs_are_skipped_on_rerun(sweep_out, capsys):
    sweep, out = sweep_out
    runs = [out / name / f"seed{seed}" for name in ("token", "causal") for seed in (0, 1)]
    before = {run: (run / "metrics.jsonl").read_text() for run in runs}
    summary = (out / "summary.md").read_text()
    assert cli(["ablate", "--sweep", str(sweep), "--out", str(out), "--seeds", "2", "--stats-rows", "16",
                "train.max_steps=3"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already finished, skipped") == 4
    assert {run: (run / "metrics.jsonl").read_text() for run in runs} == before
    assert (out / "summary.md").read_text() == summary  # the recorded wall times, not the skip's


def test_changed_overrides_of_a_started_run_are_refused(sweep_out, capsys):
    sweep, out = sweep_out
    assert cli(["ablate", "--sweep", str(sweep), "--out", str(out), "--only", "token", "train.lr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "variant 'token' seed 0" in err and "train.lr=1e-3" in err and "another --out" in err


def test_seeds_count_up_from_the_variants_seed_into_their_own_directories(tmp_path):
    from pretrain.cli.ablate import load_sweep
    sweep = write_sweep(tmp_path, tmp_path / "cache", {"a": [], "b": ["train.seed=7"]})
    _, (a, b) = load_sweep(sweep, tmp_path / "out", ["train.lr=1e-3"], seeds=3)
    assert list(a.runs) == [0, 1, 2] and list(b.runs) == [7, 8, 9]
    for variant in (a, b):
        for seed, cfg in variant.runs.items():
            assert cfg.train.seed == seed and cfg.train.lr == 1e-3
            assert Path(cfg.run.dir) == tmp_path / "out" / variant.name / f"seed{seed}"


def test_unknown_variant_in_only_or_reference_is_refused(tmp_path, capsys):
    sweep = write_sweep(tmp_path, tmp_path / "cache", {"a": [], "b": []})
    for flag in ("--only", "--reference"):
        assert cli(["ablate", "--sweep", str(sweep), "--out", str(tmp_path / "out"), flag, "c"]) == 2
        assert f"{flag}: unknown variant(s) ['c']" in capsys.readouterr().err
    assert cli(["ablate", "--sweep", str(sweep), "--out", str(tmp_path / "out"), "--seeds", "0"]) == 2
    assert "--seeds=0 must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


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
    from pretrain.cli.ablate import load_sweep
    from pretrain.train.ablation_summary import summary_markdown
    sweep = write_sweep(tmp_path, tmp_path / "cache", {"token": [], "causal": ["objective.strategy=causal"]},
                        eval_objective=None)
    _, variants = load_sweep(sweep, tmp_path / "out", [])
    assert "NOT comparable" in summary_markdown(variants, {})
    sweep = write_sweep(tmp_path, tmp_path / "cache", {
        "a": [], "b": ["eval.objective.token.mask_ratio=0.3"], "c": ["eval.seed=1"], "d": ["data.alpha=1.0"],
        "same-task": ["eval.objective.layout=legacy", "data.num_workers=2", "train.lr=1e-3", "train.seed=5",
                      "objective.token.sentinels=true", "eval.objective.token.sentinels=true"]})
    _, variants = load_sweep(sweep, tmp_path / "out", [])
    assert "NOT comparable across variants: variants ['b', 'c', 'd'] are evaluated on other samples" in \
        summary_markdown(variants, {})
    assert summary_markdown([variants[0], variants[-1]], {}).startswith("# Ablation sweep\n\nComparable")


def test_every_training_seed_is_scored_on_the_same_held_out_masks(trainer_factory, tmp_path):
    """train.seed moves the initialization, the data order and the training masks; the held-out rows and
    the downstream infill spans follow eval.seed only."""
    import torch
    from pretrain.train.downstream import build_examples

    def first_batches(*overrides):
        trainer = trainer_factory(tmp_path / "-".join(overrides), "eval.interval=1", "eval.batches=1", *overrides)
        train, held_out = next(iter(trainer.s.loader)), next(iter(trainer.s.eval_loader))
        weights = next(trainer.engine.model.parameters()).full_tensor()
        return train, held_out, weights, build_examples(trainer.cfg, trainer.s.data)[0]

    train0, eval0, weights0, examples0 = first_batches("train.seed=0")
    train1, eval1, weights1, examples1 = first_batches("train.seed=1")
    _, eval_other, _, examples_other = first_batches("train.seed=0", "eval.seed=1")
    assert not torch.equal(train0["input_ids"], train1["input_ids"]) and not torch.equal(weights0, weights1)
    assert eval0.keys() == eval1.keys() and all(torch.equal(eval0[k], eval1[k]) for k in eval0)
    assert [e.spans.tolist() for e in examples0] == [e.spans.tolist() for e in examples1]
    assert torch.equal(eval0["sample_ids"], eval_other["sample_ids"])  # the same windows ...
    assert not torch.equal(eval0["input_ids"], eval_other["input_ids"])  # ... masked otherwise
    assert [e.spans.tolist() for e in examples0] != [e.spans.tolist() for e in examples_other]


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


def test_objective_statistics_resolve_gmask_positions_as_the_trainer_does(tmp_path, cache):
    """gmask_positions=auto (configs/glm-4-9b.yaml) is resolved by the model's positions before the
    statistics' collator sees it, as in the trainer: with 1-D RoPE the [gMASK] blocks prolong the text."""
    from pretrain.train.ablation_summary import overall_group, training_objective_stats
    from pretrain.train.config import load_config
    base = write_sweep(tmp_path, cache, {"a": []}).parent / "base.yaml"
    for encoding in ("learned_2d", "rope_1d"):
        cfg = load_config(base, ["objective.strategy=causal", "objective.gmask_positions=auto",
                                 f"model.position_encoding={encoding}"])
        stats = overall_group(training_objective_stats(cfg, 8))
        assert stats["rows"] == 8 and stats["masked_ratio"]["mean"] > 0.5, (encoding, stats)
