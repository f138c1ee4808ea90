"""The ablation summary's plot: eval loss against tokens seen for every variant, the mean over its seeds
with the 95 % Student-t interval as a band. Headless: a bare matplotlib ``Figure`` renders with Agg,
never pyplot or a display (matplotlib is in the [dev] extra; without it there is no plot)."""
from __future__ import annotations

from pathlib import Path

from pretrain.train.ablation_stats import LEVEL, estimate
from pretrain.train.ablation_summary import RunResult


def mean_curve(results: list[RunResult]) -> list[tuple[float, float, float]]:
    """(tokens seen, mean eval loss, interval half-width or 0) at every step that all seeds evaluated;
    tokens are the seeds' mean (real tokens differ a little between data orders)."""
    by_seed = [{step: (tokens, loss) for step, tokens, loss in r.curve} for r in results]
    steps = sorted(set.intersection(*(set(curve) for curve in by_seed))) if by_seed else []
    points = []
    for step in steps:
        tokens = sum(curve[step][0] for curve in by_seed) / len(by_seed)
        loss = estimate([curve[step][1] for curve in by_seed])
        points.append((tokens, loss.mean, loss.half_width or 0.0))
    return points


def plot_eval_loss(results: dict[str, list[RunResult]], path: Path, title: str = "") -> Path | None:
    """Write the plot to ``path`` (PNG); None when matplotlib is not installed or nothing was evaluated."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    curves = {name: mean_curve(runs) for name, runs in results.items()}
    if not any(curves.values()):
        return None
    figure = Figure(figsize=(8, 5), dpi=120)
    axes = figure.subplots()
    for name, points in curves.items():
        if not points:
            continue
        tokens, mean, half = zip(*points)
        seeds = len(results[name])
        line, = axes.plot(tokens, mean, marker="o", markersize=3, label=f"{name} ({seeds} seed{'s' * (seeds > 1)})")
        if seeds > 1:
            axes.fill_between(tokens, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                              color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xlabel("tokens seen (real, non-padding)")
    axes.set_ylabel("eval loss (common yardstick)")
    axes.set_title(title or f"eval loss: mean over seeds, {LEVEL:.0%} interval band")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
