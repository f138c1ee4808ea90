"""The ablation summary's statistics (intervals over seeds, the tests against the reference variant) and
its plot, on synthetic runs; tests/test_ablate.py runs real sweeps."""
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from pretrain.train.ablation_plot import mean_curve, plot_eval_loss
from pretrain.train.ablation_stats import difference, estimate, incomplete_beta, t_critical, t_two_sided_p
from pretrain.train.ablation_summary import RunResult, Variant, summary_markdown
from pretrain.train.config import load_config


@pytest.mark.parametrize("df", [1, 2, 2.7, 4, 9, 30, 250])
def test_student_t_matches_scipy(df):
    assert t_critical(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)
    for t in (0.0, 0.3, 1.0, 2.5, 7.0, 40.0):
        assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9, abs=1e-300)
    for a, b, x in ((df / 2, 0.5, 0.01), (df / 2, 0.5, 0.7), (2.0, 3.0, 0.4), (0.5, 0.5, 0.99)):
        assert incomplete_beta(a, b, x) == pytest.approx(stats.beta.cdf(x, a, b), rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_intervals_and_tests_match_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    reference = rng.normal(5.0, 0.1, n)
    variant = reference + rng.normal(0.05, 0.05, n)  # shares each seed's component with the reference
    e = estimate(list(variant))
    low, high = stats.t.interval(0.95, n - 1, loc=variant.mean(), scale=stats.sem(variant))
    assert (e.mean - e.half_width, e.mean + e.half_width) == pytest.approx((low, high), rel=1e-9)
    paired = difference(list(variant), list(reference), paired=True)
    assert paired.test == "paired t" and paired.p == pytest.approx(stats.ttest_rel(variant, reference).pvalue)
    other = rng.normal(5.2, 0.3, n + 1)
    welch = difference(list(other), list(reference), paired=False)
    assert welch.test == "Welch t"
    assert welch.p == pytest.approx(stats.ttest_ind(other, reference, equal_var=False).pvalue, rel=1e-9)
    # significant exactly when the interval excludes 0
    for d in (paired, welch):
        assert d.significant == (abs(d.mean) > d.half_width)


def test_degenerate_comparisons():
    assert estimate([3.0]).half_width is None
    assert difference([1.0], [2.0], paired=True).p is None
    assert difference([1.0, 2.0], [2.0], paired=False).test == "none"
    constant = difference([2.0, 3.0], [1.0, 2.0], paired=True)  # the same +1 on every seed: no noise
    assert constant.significant and constant.half_width == 0.0
    with pytest.raises(ValueError, match="one value per seed"):
        difference([1.0, 2.0], [1.0, 2.0, 3.0], paired=True)


def _variants(tmp_path: Path, names: list[str]) -> list[Variant]:
    base = {"model": {"preset": "glm-tiny"}, "data": {"corpus": "embedded"},
            "eval": {"interval": 2, "downstream": True, "objective": {"strategy": "document"}}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    return [Variant(name, [], {0: load_config(tmp_path / "base.yaml")}) for name in names]


def _runs(eval_losses: list[float], seeds: list[int] | None = None, **extra) -> list[RunResult]:
    return [RunResult(seed, {"step": 4, "loss": 3.0, "eval_step": 4, "eval/loss": loss, "eval/loss/document": loss,
                             **extra, "tokens_per_s": 100.0, "wall_s": 2.0},
                      [(2, 1000 + seed, loss + 1.0), (4, 2000 + seed, loss)])
            for seed, loss in zip(seeds or range(len(eval_losses)), eval_losses)]


def test_difference_table_marks_only_what_exceeds_the_noise(tmp_path):
    variants = _variants(tmp_path, ["ref", "better", "same", "welch", "single"])
    results = {"ref": _runs([5.0, 5.2, 4.9]),
               "better": _runs([4.8, 5.01, 4.69]),     # -0.2 on every seed, up to 0.01: paired, significant
               "same": _runs([5.1, 5.0, 5.0]),         # noise
               "welch": _runs([4.0, 4.1], seeds=[7, 8]),  # other seeds: Welch
               "single": _runs([4.0])}
    summary = summary_markdown(variants, results, stats=None, plot=None)
    lines = summary.splitlines()
    start = lines.index("| variant | test | eval loss | document |")
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in lines[start + 2:start + 6])}
    assert list(rows) == ["better", "same", "welch", "single"]
    assert rows["better"][1] == "paired t" and rows["better"][2].startswith("**-0.2000 ± ")
    assert rows["same"][1] == "paired t" and not rows["same"][2].startswith("**")
    assert rows["welch"][1] == "Welch t" and rows["welch"][2].startswith("**-0.9833 ± ")
    assert rows["single"][1:3] == ["none", "-1.0333 (1 seed)"]
    main = [line for line in summary.splitlines() if line.startswith("| ref |")][0]
    e = estimate([5.0, 5.2, 4.9])
    assert f"| {e.mean:.4f} ± {e.half_width:.4f} |" in main and main.startswith("| ref | 3 | 4 | 3.0000 ± 0.0000 | 4 |")
    # another reference: the table is relative to it
    assert "Difference from `same`" in summary_markdown(variants, results, reference="same")


def test_summary_shows_downstream_metrics_overall_and_per_language(tmp_path):
    variants = _variants(tmp_path, ["a", "b"])
    results = {name: _runs([4.0], **{"eval/cloze_acc": acc, "eval/cloze_acc/de": acc, "eval/cloze_acc/en": 1.0,
                                     "eval/infill_ppl": 9.5}) for name, acc in (("a", 0.25), ("b", 0.5))}
    summary = summary_markdown(variants, results)
    table = [line for line in summary.splitlines() if line.startswith("|")]
    assert table[0] == ("| variant | seeds | step | train loss (own objective) | eval step | eval loss | document "
                        "| cloze_acc | infill_ppl | tokens/s | wall s |")
    assert table[2] == "| a | 1 | 4 | 3.0000 | 4 | 4.0000 | 4.0000 | 0.2500 | 9.5000 | 100 | 2.0 |"
    assert "`eval/cloze_acc` per language:" in summary
    assert table[-4:] == ["| language | a | b |", "|---|---|---|", "| de | 0.2500 | 0.5000 |",
                          "| en | 1.0000 | 1.0000 |"]


def test_plot_averages_the_seeds_of_each_variant(tmp_path):
    runs = _runs([5.0, 5.2, 4.9])
    points = mean_curve(runs)
    assert [p[0] for p in points] == [1001.0, 2001.0]
    e = estimate([5.0, 5.2, 4.9])
    assert points[1][1:] == pytest.approx((e.mean, e.half_width))
    assert mean_curve(runs[:1])[1][2] == 0.0  # one seed: no band
    path = plot_eval_loss({"a": runs, "b": _runs([4.0])}, tmp_path / "plot" / "eval_loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_eval_loss({"a": [RunResult(0, {}, [])]}, tmp_path / "none.png") is None
    assert not math.isnan(points[0][1])
