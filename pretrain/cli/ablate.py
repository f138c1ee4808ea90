"""``python -m pretrain ablate --sweep FILE --out DIR [section.key=value ...]``: run every variant of
an ablation sweep (configs/ablations/sweep.yaml documents the format), then compare them in one table.

Each variant is its own ``python -m pretrain train`` process (``torchrun`` with ``--nproc N > 1``)
writing ``<out>/<variant>/``; a variant whose run already reached ``train.max_steps`` is skipped, an
interrupted one resumes from its checkpoint, so re-running the same command continues the sweep.
The table (printed and written to ``<out>/summary.md``) is read from each run's metrics.jsonl.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pretrain.config import ConfigError, load_yaml, to_dict
from pretrain.train.config import Config, load_config
from pretrain.train.metrics import read_jsonl

MARKER = "ablate.json"  # in a variant's run dir: its overrides, wall time so far, whether it finished
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# ObjectiveConfig fields that change how a yardstick sample is encoded for the model, not which tokens
# are masked: a variant may set them in eval.objective and stay comparable.
_ENCODING_FIELDS = ("block_positions", "layout")
# DataConfig fields that do not change which held-out tokens the eval reads.
_DATA_PLUMBING = ("cache_dir", "num_workers", "verify_checksums")


@dataclass
class Variant:
    name: str
    overrides: list[str]  # the sweep's for this variant, then the command line's
    cfg: Config  # resolved base + overrides + run.dir=<out>/<name>


def load_sweep(path: Path, out: Path, common: list[str]) -> tuple[Path, list[Variant]]:
    """(base config path, every variant resolved); a bad name, key or value fails here, before any run."""
    data = load_yaml(path)
    unknown = sorted(set(data) - {"base", "variants"})
    if unknown or not isinstance(data.get("base"), str) or not isinstance(data.get("variants"), dict):
        raise ConfigError(f"sweep {path}: expected keys 'base' (a run config path) and 'variants' (name -> list "
                          f"of section.key=value overrides); got {sorted(data)}")
    if not data["variants"]:
        raise ConfigError(f"sweep {path}: 'variants' is empty")
    base = path.parent / data["base"]
    variants = []
    for name, overrides in data["variants"].items():
        where = f"sweep {path}: variant {name!r}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: a name becomes a directory; use letters, digits, '-', '_' and '.'")
        overrides = overrides or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ConfigError(f"{where}: expected a list of section.key=value strings, got {overrides!r}")
        overrides = [*overrides, *common]
        try:
            cfg = load_config(base, [*overrides, f"run.dir={out / name}"])
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from err
        variants.append(Variant(name, overrides, cfg))
    return base, variants


def train_command(cfg_path: Path, overrides: list[str], nproc: int) -> list[str]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, "-m", "pretrain", "train", "--config", str(cfg_path), *overrides]


def finished(cfg: Config) -> bool:
    """The trainer always saves a complete checkpoint at max_steps (a SIGTERM stop saves earlier)."""
    from pretrain.train.checkpoint import COMPLETE, step_dir
    return (step_dir(cfg.checkpoint_dir(), cfg.train.max_steps) / COMPLETE).is_file()


def run_variant(variant: Variant, base: Path, nproc: int) -> tuple[float, bool]:
    """Run, resume or skip one variant; returns (its wall seconds over all invocations, skipped)."""
    run_dir = Path(variant.cfg.run.dir)
    marker = run_dir / MARKER
    recorded = {"overrides": variant.overrides, "wall_s": 0.0, "finished": False}
    if marker.is_file():
        recorded = json.loads(marker.read_text(encoding="utf-8"))
        if recorded["overrides"] != variant.overrides:  # resuming would mix two configs in one run
            raise ConfigError(f"variant {variant.name!r}: {run_dir} was run with overrides {recorded['overrides']}, "
                              f"the sweep now gives {variant.overrides}; delete {run_dir} or use another --out")
        if recorded["finished"] and finished(variant.cfg):
            return recorded["wall_s"], True
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(recorded, indent=1), encoding="utf-8")
    log = run_dir / "train.log"
    start = time.perf_counter()
    command = train_command(base, [*variant.overrides, f"run.dir={run_dir}"], nproc)
    with log.open("a", encoding="utf-8") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
        # Preemption (Slurm sends SIGTERM): the trainer saves a checkpoint and exits; a re-run resumes.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum))
        try:
            code = process.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
    recorded["wall_s"] += time.perf_counter() - start
    recorded["finished"] = code == 0 and finished(variant.cfg)
    marker.write_text(json.dumps(recorded, indent=1), encoding="utf-8")
    if code != 0:
        raise RuntimeError(f"variant {variant.name!r} failed with exit code {code}; see {log} (re-running the "
                           f"sweep resumes it from its last checkpoint)")
    if not recorded["finished"]:
        raise RuntimeError(f"variant {variant.name!r} stopped before step {variant.cfg.train.max_steps} (SIGTERM?); "
                           f"see {log}; re-run the sweep to resume it")
    return recorded["wall_s"], False


def read_metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "metrics.jsonl")  # a line torn by a crash mid-write is dropped


def variant_row(variant: Variant, wall_s: float) -> dict:
    """Final train loss, the last evaluation (overall and per strategy), median tokens/s, wall time."""
    records = read_metrics(Path(variant.cfg.run.dir))
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    last_eval = evals[-1] if evals else {}
    return {"variant": variant.name, "step": train[-1]["step"] if train else None,
            "loss": train[-1]["loss"] if train else None, "eval_step": last_eval.get("step"),
            **{k: v for k, v in last_eval.items() if k.startswith("eval/")},
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in train) if train else None,
            "wall_s": wall_s}


def differing_eval_sets(variants: list[Variant]) -> list[str]:
    """Variants evaluated on other held-out samples or masks than the first one (their eval losses are
    not comparable with the others'): the eval objective's masking task and whatever picks the
    held-out windows (data, seed, seq_len, global_batch_size, eval.batches)."""
    def eval_set(v: Variant) -> tuple:
        objective = {k: val for k, val in to_dict(v.cfg.eval_objective()).items() if k not in _ENCODING_FIELDS}
        data = {k: val for k, val in to_dict(v.cfg.data).items() if k not in _DATA_PLUMBING}
        train = v.cfg.train
        return objective, data, train.seed, train.seq_len, train.global_batch_size, v.cfg.eval.batches
    reference = eval_set(variants[0])
    return [v.name for v in variants if eval_set(v) != reference]


def summary_markdown(variants: list[Variant], rows: list[dict]) -> str:
    differing = differing_eval_sets(variants)
    fixed = all(v.cfg.eval.objective is not None for v in variants)
    strategies = sorted({k for row in rows for k in row if k.startswith("eval/loss/")})
    # other eval metrics (eval.downstream: eval/cloze_acc, ...) overall here, per language below
    metrics = sorted({k for row in rows for k in row if k.startswith("eval/") and k.count("/") == 1} - {"eval/loss"})
    columns = ["variant", "step", "train loss (own objective)", "eval step", "eval loss",
               *[k.removeprefix("eval/loss/") for k in strategies], *[k.removeprefix("eval/") for k in metrics],
               "tokens/s", "wall s"]
    formats = {"loss": "{:.4f}", "eval/loss": "{:.4f}", **{k: "{:.4f}" for k in [*strategies, *metrics]},
               "tokens_per_s": "{:.0f}", "wall_s": "{:.1f}"}
    keys = ["variant", "step", "loss", "eval_step", "eval/loss", *strategies, *metrics, "tokens_per_s", "wall_s"]
    lines = ["# Ablation sweep", ""]
    if fixed and not differing:
        yardstick = json.dumps(variants[0].cfg.eval.objective)
        lines += ["Comparable across variants: `eval loss`, the per-strategy eval columns and the downstream ones "
                  "(cloze_*, infill_*, with eval.downstream). Every variant is "
                  "evaluated on the same held-out windows with the same masks, under the common eval objective "
                  f"`{yardstick}` (other fields: defaults); variants may differ only in how it is encoded "
                  f"({', '.join(_ENCODING_FIELDS)}).", ""]
    else:
        why = (f"variants {differing} are evaluated on other samples or masks (eval.objective, data, seed, "
               "seq_len, global_batch_size or eval.batches differ)" if differing else
               "some variants set no eval.objective and are evaluated under their own training objective")
        lines += [f"NOT comparable across variants: {why}. Compare only a strategy's eval column between variants "
                  "that trained on it; set eval.objective in the base config for a common yardstick.", ""]
    lines += ["`train loss` is each variant's loss under its own training objective (last logged step): it is "
              "not comparable across variants. `tokens/s` is the median over logged steps; `wall s` sums the "
              "variant's invocations (a resumed variant includes each restart).", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("-" if row.get(k) is None else formats.get(k, "{}").format(row[k]) for k in keys)
              + " |" for row in rows]
    for metric in metrics:
        languages = sorted({k.rsplit("/", 1)[1] for row in rows for k in row if k.startswith(f"{metric}/")})
        if languages:
            lines += ["", f"`{metric}` per language:", "", "| language | " + " | ".join(r["variant"] for r in rows)
                      + " |", "|" + "---|" * (len(rows) + 1)]
            lines += [f"| {lang} | " + " | ".join("-" if row.get(f"{metric}/{lang}") is None else
                                                  f"{row[f'{metric}/{lang}']:.4f}" for row in rows) + " |"
                      for lang in languages]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", default="configs/ablations/sweep.yaml", help="sweep file (format in its header)")
    parser.add_argument("--out", default="runs/ablate", help="one run directory per variant, summary.md")
    parser.add_argument("--nproc", type=int, default=1, help="processes per variant (torchrun when > 1)")
    parser.add_argument("--only", type=lambda text: text.split(","), metavar="A,B,...",
                        help="run only these variants (comma-separated), in sweep order")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="applied to every variant after its own overrides (train.max_steps=60)")


def main(args: argparse.Namespace) -> int:
    sweep, out = Path(args.sweep), Path(args.out)
    try:
        if args.nproc < 1:
            raise ConfigError(f"--nproc={args.nproc} must be >= 1")
        base, variants = load_sweep(sweep, out, args.overrides)
        if args.only:
            missing = sorted(set(args.only) - {v.name for v in variants})
            if missing:
                raise ConfigError(f"--only: unknown variant(s) {missing}; {sweep} has {[v.name for v in variants]}")
            variants = [v for v in variants if v.name in args.only]
        rows = []
        for i, variant in enumerate(variants, 1):
            print(f"[ablate] {i}/{len(variants)} {variant.name}: {variant.cfg.run.dir}", flush=True)
            wall, skipped = run_variant(variant, base, args.nproc)
            print(f"[ablate] {variant.name}: {'already finished, skipped' if skipped else f'done in {wall:.0f} s'}",
                  flush=True)
            rows.append(variant_row(variant, wall))
    except RuntimeError as err:  # a variant failed: its log says why (a ConfigError is cli/_errors.py's)
        print(f"ablate: {err}", file=sys.stderr)
        return 1
    text = summary_markdown(variants, rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text, encoding="utf-8")
    print(text, end="")
    print(f"[ablate] summary: {out / 'summary.md'}")
    return 0
