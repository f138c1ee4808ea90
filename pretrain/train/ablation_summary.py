"""The summary of an ablation sweep (``python -m pretrain ablate``): each run's final numbers and eval
curve read from its metrics.jsonl, aggregated over seeds (mean and 95 % interval), the differences
from the reference variant that exceed the seeds' noise (ablation_stats.py), each variant's objective
statistics (objectives.stats) and the eval-loss plot (ablation_plot.py), as Markdown."""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.config import to_dict
from pretrain.train.ablation_stats import LEVEL, Difference, Estimate, difference, estimate
from pretrain.train.config import Config
from pretrain.train.metrics import read_jsonl

# ObjectiveConfig fields (dotted) that change how a yardstick sample is encoded for the model, not which
# tokens are masked and predicted: a variant may set them in eval.objective and stay comparable.
ENCODING_FIELDS = ("block_positions", "layout", "token.sentinels")
# DataConfig fields that do not change which held-out tokens the eval reads.
DATA_PLUMBING = ("cache_dir", "num_workers", "verify_checksums")


@dataclass
class Variant:
    name: str
    overrides: list[str]  # the sweep's for this variant, then the command line's
    runs: dict[int, Config] = field(default_factory=dict)  # seed -> resolved config, run.dir <out>/<name>/seed<k>

    @property
    def cfg(self) -> Config:
        """The first seed's config (everything but train.seed and run.dir is the same for every seed)."""
        return next(iter(self.runs.values()))


@dataclass
class RunResult:
    seed: int
    final: dict  # step, loss, eval_step, every eval/* of the last evaluation, tokens_per_s, wall_s
    curve: list[tuple[int, float, float]]  # (step, tokens seen, eval/loss) at every evaluation


def read_run(run_dir: Path, seed: int, wall_s: float) -> RunResult:
    """Final train loss, the last evaluation (overall, per strategy, downstream), median tokens/s, wall time."""
    records = read_jsonl(run_dir / "metrics.jsonl")  # a line torn by a crash mid-write is dropped
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    last_eval = evals[-1] if evals else {}
    final = {"step": train[-1]["step"] if train else None, "loss": train[-1]["loss"] if train else None,
             "eval_step": last_eval.get("step"), **{k: v for k, v in last_eval.items() if k.startswith("eval/")},
             "tokens_per_s": statistics.median(r["tokens_per_s"] for r in train) if train else None,
             "wall_s": wall_s}
    return RunResult(seed, final, [(r["step"], r.get("tokens_seen", 0), r["eval/loss"]) for r in evals])


def differing_eval_sets(variants: list[Variant]) -> list[str]:
    """Variants evaluated on other held-out samples or masks than the first one (their eval numbers are
    not comparable with the others'): the eval objective's masking task and whatever picks the held-out
    windows and masks (data, eval.seed, seq_len, global_batch_size, eval.batches). train.seed does not
    enter: the held-out masks are keyed by eval.seed."""
    def eval_set(v: Variant) -> tuple:
        objective = to_dict(v.cfg.eval_objective())
        for dotted in ENCODING_FIELDS:
            *parents, leaf = dotted.split(".")
            section = objective
            for parent in parents:
                section = section[parent]
            section.pop(leaf)
        data = {k: val for k, val in to_dict(v.cfg.data).items() if k not in DATA_PLUMBING}
        train = v.cfg.train
        return objective, data, v.cfg.eval.seed, train.seq_len, train.global_batch_size, v.cfg.eval.batches
    reference = eval_set(variants[0])
    return [v.name for v in variants if eval_set(v) != reference]


def _estimates(results: list[RunResult]) -> dict[str, Estimate]:
    keys = {k for r in results for k, v in r.final.items() if isinstance(v, (int, float))}
    return {k: estimate([r.final[k] for r in results]) for k in keys
            if all(isinstance(r.final.get(k), (int, float)) for r in results)}


def _cell(value: Estimate | None, fmt: str) -> str:
    if value is None:
        return "-"
    if value.half_width is None:
        return fmt.format(value.mean)
    return f"{fmt.format(value.mean)} ± {fmt.format(value.half_width)}"


def _difference_cell(d: Difference) -> str:
    text = f"{d.mean:+.4f}" + ("" if d.half_width is None else f" ± {d.half_width:.4f}")
    if d.p is None:
        return f"{text} (1 seed)"
    return f"**{text}** (p={d.p:.3f})" if d.significant else f"{text} (p={d.p:.2f})"


def _steps(results: list[RunResult], key: str) -> str:
    values = sorted({r.final.get(key) for r in results}, key=lambda v: (v is None, v))
    return "-" if values == [None] else "/".join(str(v) for v in values)


def training_objective_stats(cfg: Config, rows: int) -> dict:
    """``objective_stats`` of the run's training objective over its first ``rows`` training samples."""
    from pretrain.data.loader import open_data, samples_and_collator
    from pretrain.objectives import declared_special_tokens, resolve_gmask_positions
    from pretrain.objectives.stats import objective_stats
    train = cfg.train
    source = open_data(cfg.data, declared_special_tokens(cfg.objective))
    # gmask_positions=auto as the trainer resolves it, by the model's position encoding
    encoding = cfg.model.resolve(vocab_size=source.vocab_size).position_encoding
    loader, collator = samples_and_collator(cfg.data, source, resolve_gmask_positions(cfg.objective, encoding),
                                            seq_len=train.seq_len, seed=train.seed,
                                            global_batch_size=train.global_batch_size)
    return objective_stats(collator, [loader.dataset[i] for i in range(rows)])


def overall_group(stats: dict) -> dict:
    """The group of ``objectives.stats.objective_stats`` over every strategy and language."""
    groups = stats["groups"]
    strategies = {g["strategy"] for g in groups}
    strategy = "all" if "all" in strategies else groups[0]["strategy"]
    mine = [g for g in groups if g["strategy"] == strategy]
    return next((g for g in mine if g["language"] == "all"), mine[0])


def objective_table(variants: list[Variant], stats: dict[str, dict]) -> list[str]:
    lines = ["| variant | objective | rows | masked ratio (p5-p95) | span length | spans/row | Part-B share | padding "
             "| dropped spans |", "|" + "---|" * 9]
    for v in variants:
        if v.name not in stats:
            continue
        g = overall_group(stats[v.name])
        m = g["masked_ratio"]
        objective = v.cfg.objective.strategy if v.cfg.objective.strategy != "mixture" else \
            "+".join(f"{k}:{w:g}" for k, w in v.cfg.objective.mixture.items())
        lines.append(f"| {v.name} | {objective} | {g['rows']} | {m['mean']:.3f} ({m['p5']:.3f}-{m['p95']:.3f}) | "
                     f"{g['mean_span_length']:.2f} | {g['spans_per_row']:.2f} | {g['part_b_share']:.3f} | "
                     f"{g['padding_fraction']:.3f} | {g['dropped_spans']} |")
    return lines


def summary_markdown(variants: list[Variant], results: dict[str, list[RunResult]], reference: str | None = None,
                     stats: dict[str, dict] | None = None, plot: str | None = None) -> str:
    """The summary: one row per variant (mean ± 95 % interval over its seeds), the differences from
    ``reference`` (default: the first variant), per-language tables, objective statistics, the plot."""
    reference = reference or variants[0].name
    differing = differing_eval_sets(variants)
    comparable = not differing and all(v.cfg.eval.objective is not None for v in variants)
    estimates = {v.name: _estimates(results.get(v.name, [])) for v in variants}
    keys = {k for e in estimates.values() for k in e}
    strategies = sorted(k for k in keys if k.startswith("eval/loss/"))
    # other eval metrics (eval.downstream: eval/cloze_acc, ...) overall here, per language below
    metrics = sorted(k for k in keys if k.startswith("eval/") and k.count("/") == 1 and k != "eval/loss")
    compared = ["eval/loss", *strategies, *metrics]
    names = {"eval/loss": "eval loss", **{k: k.removeprefix("eval/loss/") for k in strategies},
             **{k: k.removeprefix("eval/") for k in metrics}}
    seeds = sorted({len(results.get(v.name, [])) for v in variants})
    lines = ["# Ablation sweep", ""]
    if comparable:
        yardstick = json.dumps(variants[0].cfg.eval.objective)
        lines += ["Comparable across variants: `eval loss`, the per-strategy eval columns and the downstream ones "
                  "(cloze_*, infill_*, with eval.downstream). Every variant and seed is evaluated at its last step "
                  "on the same held-out windows with the same masks (`eval.seed`), under the common eval objective "
                  f"`{yardstick}` (other fields: defaults); variants may differ only in how it is encoded "
                  f"({', '.join(ENCODING_FIELDS)}).", ""]
    else:
        why = (f"variants {differing} are evaluated on other samples or masks (eval.objective, data, eval.seed, "
               "seq_len, global_batch_size or eval.batches differ)" if differing else
               "some variants set no eval.objective and are evaluated under their own training objective")
        lines += [f"NOT comparable across variants: {why}. Compare only a strategy's eval column between variants "
                  "that trained on it; set eval.objective in the base config for a common yardstick.", ""]
    lines += [f"Seeds per variant: {'/'.join(map(str, seeds))} (`train.seed`: initialization and data order). "
              f"Each cell is the mean over seeds ± the half-width of its {LEVEL:.0%} Student-t interval (no interval "
              "from one seed). `train loss` is each variant's loss under its own training objective (last logged "
              "step): it is not comparable across variants. `tokens/s` is the median over logged steps; `wall s` "
              "is per run and sums its invocations (a resumed run includes each restart).", ""]
    columns = ["variant", "seeds", "step", "train loss (own objective)", "eval step", *(names[k] for k in compared),
               "tokens/s", "wall s"]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for v in variants:
        e, runs = estimates[v.name], results.get(v.name, [])
        cells = [v.name, str(len(runs)), _steps(runs, "step"), _cell(e.get("loss"), "{:.4f}"),
                 _steps(runs, "eval_step"), *(_cell(e.get(k), "{:.4f}") for k in compared), _cell(e.get("tokens_per_s"), "{:.0f}"),
                 _cell(e.get("wall_s"), "{:.1f}")]
        lines.append("| " + " | ".join(cells) + " |")
    if comparable and len(variants) > 1:
        lines += ["", *difference_table(variants, results, reference, compared, names)]
    for metric in metrics:
        languages = sorted({k.rsplit("/", 1)[1] for k in keys if k.startswith(f"{metric}/")})
        if languages:
            lines += ["", f"`{metric}` per language:", "", "| language | " + " | ".join(v.name for v in variants)
                      + " |", "|" + "---|" * (len(variants) + 1)]
            lines += [f"| {lang} | " + " | ".join(_cell(estimates[v.name].get(f"{metric}/{lang}"), "{:.4f}")
                                                  for v in variants) + " |" for lang in languages]
    if stats:
        lines += ["", "Objective statistics of each variant's training objective (`objectives.stats.objective_stats` "
                  "over the first training rows, every strategy and language; masked = predicted text tokens / raw "
                  "tokens of the row; Part B and padding = shares of the row):", "", *objective_table(variants, stats)]
    if plot:
        lines += ["", f"![eval loss vs tokens]({plot})", "",
                  f"`{plot}`: eval loss against tokens seen, mean over seeds with its {LEVEL:.0%} interval as a band."]
    return "\n".join(lines) + "\n"


def difference_table(variants: list[Variant], results: dict[str, list[RunResult]], reference: str,
                     compared: list[str], names: dict[str, str]) -> list[str]:
    """variant - reference per comparable column; bold where the difference exceeds the seeds' noise."""
    ref_runs = {r.seed: r for r in results.get(reference, [])}
    lines = [f"Difference from `{reference}` (variant - reference, mean ± {LEVEL:.0%} interval; **bold**: the "
             f"interval excludes 0, i.e. a two-sided t-test at {1 - LEVEL:.0%}; paired over seeds when both ran the "
             "same seeds, as the eval set is identical, Welch's otherwise):", "",
             "| variant | test | " + " | ".join(names[k] for k in compared) + " |", "|" + "---|" * (len(compared) + 2)]
    for v in variants:
        if v.name == reference:
            continue
        runs = {r.seed: r for r in results.get(v.name, [])}
        paired = sorted(runs) == sorted(ref_runs)
        cells, tests = [], set()
        for key in compared:
            mine = [runs[s].final.get(key) for s in sorted(runs)]
            theirs = [ref_runs[s].final.get(key) for s in sorted(ref_runs)]
            if not mine or not theirs or None in mine or None in theirs:
                cells.append("-")
                continue
            d = difference(mine, theirs, paired)
            tests.add(d.test)
            cells.append(_difference_cell(d))
        lines.append(f"| {v.name} | {'/'.join(sorted(tests)) or '-'} | " + " | ".join(cells) + " |")
    return lines
