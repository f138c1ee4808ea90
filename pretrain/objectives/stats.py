"""What an objective does to rows, measured: per strategy and language, the masked ratio, span lengths
and counts, how much of a row Part B and padding take, and what had to be dropped to fit.

``objective_stats(collator, samples)`` builds the rows with the collator itself (the same plan and
layout as training) and returns plain numbers (JSON-ready); ``python -m pretrain inspect --stats`` prints
them and the ablation summary tabulates them.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from pretrain.objectives.collator import GLMCollator
from pretrain.objectives.packing import TextSample

ALL = "all"


def row_measures(collator: GLMCollator, samples: Sequence[TextSample]) -> dict[str, np.ndarray]:
    """Per row of one batch: raw tokens, predicted text tokens, spans that predict something, Part-B
    and padding positions, spans dropped to fit seq_len."""
    plan = collator.plan(samples)
    batch = collator.lay_out(plan)
    docs, spans = plan.docs, plan.spans
    n_rows = len(samples)
    length = spans.end - spans.start
    trains = np.ones(len(spans), dtype=bool) if spans.inline is None else ~spans.inline | (length > 0)
    span_row = docs.row[plan.span_doc]
    used = batch["segment_ids"] >= 0
    instruction = len(collator.strategies)  # a row holding an instruction record is counted as "instruction"
    has_instruction = np.bincount(docs.row[plan.doc_strategy == instruction], minlength=n_rows) > 0
    row_strategy = np.where(has_instruction, instruction, plan.row_strategy)
    return {
        "raw": np.bincount(docs.row, weights=docs.length, minlength=n_rows),
        "masked": np.bincount(span_row, weights=np.where(trains, length, 0), minlength=n_rows),
        "spans": np.bincount(span_row[trains], minlength=n_rows),
        "part_b": (used & ~batch["part_a"]).sum(axis=1),
        "used": used.sum(axis=1),
        "padding": (~used).sum(axis=1),
        "dropped": plan.dropped,
        "strategy": np.array(collator.strategy_names)[row_strategy],
        "language": np.array([s.language or "?" for s in samples]),
    }


def summarize(rows: dict[str, np.ndarray], seq_len: int) -> dict:
    """The statistics of a group of rows."""
    ratio = rows["masked"] / np.maximum(rows["raw"], 1)
    spans = int(rows["spans"].sum())
    return {
        "rows": int(len(ratio)),
        "masked_ratio": {"mean": float(ratio.mean()), "p5": float(np.percentile(ratio, 5)),
                         "p95": float(np.percentile(ratio, 95))},
        "mean_span_length": float(rows["masked"].sum() / spans) if spans else 0.0,
        "spans_per_row": float(rows["spans"].mean()),
        "part_b_share": float(rows["part_b"].sum() / max(rows["used"].sum(), 1)),
        "padding_fraction": float(rows["padding"].sum() / (len(ratio) * seq_len)),
        "overflow_rows": int(np.count_nonzero(rows["dropped"])),
        "dropped_spans": int(rows["dropped"].sum()),
    }


def objective_stats(collator: GLMCollator, samples: Iterable[TextSample], batch_size: int = 64) -> dict:
    """Statistics of ``samples`` laid out by ``collator``, batch_size rows per call: {"seq_len",
    "raw_length", "groups": [{"strategy", "language", **summarize(...)}]} for every (strategy,
    language), each strategy over all its languages ("all", when it has several) and all rows (when
    there are several strategies)."""
    measured: dict[str, list] = defaultdict(list)
    samples = list(samples)
    if not samples:
        raise ValueError("objective_stats needs at least one sample")
    for first in range(0, len(samples), batch_size):
        for key, values in row_measures(collator, samples[first:first + batch_size]).items():
            measured[key].append(values)
    rows = {key: np.concatenate(values) for key, values in measured.items()}
    groups = []
    strategies = [s for s in collator.strategy_names if s in set(rows["strategy"])]
    for strategy in [*strategies, ALL] if len(strategies) > 1 else strategies:
        of_strategy = rows["strategy"] == strategy if strategy != ALL else np.ones(len(rows["raw"]), dtype=bool)
        languages = sorted(set(rows["language"][of_strategy]))
        for language in [*languages, ALL] if len(languages) > 1 else languages:
            chosen = of_strategy & ((rows["language"] == language) if language != ALL else True)
            groups.append({"strategy": strategy, "language": language,
                           **summarize({k: v[chosen] for k, v in rows.items()}, collator.seq_len)})
    return {"seq_len": collator.seq_len, "raw_length": collator.raw_length, "groups": groups}


def format_stats(stats: dict) -> str:
    """A fixed-width table of ``objective_stats``."""
    header = (f"{'strategy':<12} {'lang':<5} {'rows':>6} {'masked':>7} {'p5':>6} {'p95':>6} {'span len':>8} "
              f"{'spans/row':>9} {'part B':>7} {'padding':>8} {'overflow':>8} {'dropped':>7}")
    lines = [f"objective statistics (seq_len {stats['seq_len']}, raw_length {stats['raw_length']}): masked = "
             f"predicted text tokens / raw tokens of the row; part B and padding = shares of the row", header]
    for g in stats["groups"]:
        m = g["masked_ratio"]
        lines.append(f"{g['strategy']:<12} {g['language']:<5} {g['rows']:>6} {m['mean']:>7.3f} {m['p5']:>6.3f} "
                     f"{m['p95']:>6.3f} {g['mean_span_length']:>8.2f} {g['spans_per_row']:>9.2f} "
                     f"{g['part_b_share']:>7.3f} {g['padding_fraction']:>8.3f} {g['overflow_rows']:>8} "
                     f"{g['dropped_spans']:>7}")
    return "\n".join(lines)
