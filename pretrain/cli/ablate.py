"""``python -m pretrain ablate --sweep FILE --out DIR [--seeds N] [section.key=value ...]``: run every
variant of an ablation sweep (configs/ablations/sweep.yaml documents the format) with N seeds, then
compare them in one summary (pretrain/train/ablation_summary.py).

Each (variant, seed) is its own ``python -m pretrain train`` process (``torchrun`` with ``--nproc N > 1``)
writing ``<out>/<variant>/seed<k>/``, seeds k = the variant's train.seed, +1, ... (train.seed sets the
initialization and the data order; the held-out masks follow eval.seed, the same for every run). A run
that already reached ``train.max_steps`` is skipped, an interrupted one resumes from its checkpoint, so
re-running the same command continues the sweep (and ``--seeds`` can grow). The summary (printed and
written to ``<out>/summary.md``, with the plot ``<out>/eval_loss.png``) gives each column's mean over
seeds with its 95 % interval and marks the differences from the reference variant that exceed the noise.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from pretrain.config import ConfigError, load_yaml
from pretrain.train.ablation_summary import (RunResult, Variant, read_run, summary_markdown,
                                             training_objective_stats)
from pretrain.train.config import Config, load_config

MARKER = "ablate.json"  # in a run dir: its overrides, wall time so far, whether it finished
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def load_sweep(path: Path, out: Path, command_line: list[str], seeds: int = 1) -> tuple[Path, list[Variant]]:
    """(base config path, every variant resolved for each of its ``seeds`` seeds): base, then the sweep's
    common overrides, the variant's, ``command_line``'s; a bad name, key or value fails here, before any run."""
    data = load_yaml(path)
    unknown = sorted(set(data) - {"base", "common", "variants"})
    if unknown or not isinstance(data.get("base"), str) or not isinstance(data.get("variants"), dict):
        raise ConfigError(f"sweep {path}: expected keys 'base' (a run config path), optional 'common' (overrides "
                          f"of every variant) and 'variants' (name -> list of section.key=value overrides); got "
                          f"{sorted(data)}")
    if not data["variants"]:
        raise ConfigError(f"sweep {path}: 'variants' is empty")
    base = path.parent / data["base"]
    shared = _override_list(data.get("common"), f"sweep {path}: common")
    variants = []
    for name, overrides in data["variants"].items():
        where = f"sweep {path}: variant {name!r}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: a name becomes a directory; use letters, digits, '-', '_' and '.'")
        overrides = [*shared, *_override_list(overrides, where), *command_line]
        variant = Variant(name, overrides)
        try:
            first = load_config(base, overrides).train.seed
            for seed in range(first, first + seeds):
                variant.runs[seed] = load_config(base, [*seed_overrides(variant, seed),
                                                        f"run.dir={out / name / f'seed{seed}'}"])
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from err
        variants.append(variant)
    return base, variants


def _override_list(overrides, where: str) -> list[str]:
    overrides = overrides or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"{where}: expected a list of section.key=value strings, got {overrides!r}")
    return overrides


def seed_overrides(variant: Variant, seed: int) -> list[str]:
    """What one run of ``variant`` is trained with (before its run.dir)."""
    return [*variant.overrides, f"train.seed={seed}"]


def train_command(cfg_path: Path, overrides: list[str], nproc: int) -> list[str]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, "-m", "pretrain", "train", "--config", str(cfg_path), *overrides]


def finished(cfg: Config) -> bool:
    """The trainer always saves a complete checkpoint at max_steps (a SIGTERM stop saves earlier)."""
    from pretrain.train.checkpoint import COMPLETE, step_dir
    return (step_dir(cfg.checkpoint_dir(), cfg.train.max_steps) / COMPLETE).is_file()


def run_one(variant: Variant, seed: int, base: Path, nproc: int) -> tuple[float, bool]:
    """Run, resume or skip one seed of a variant; returns (its wall seconds over all invocations, skipped)."""
    cfg = variant.runs[seed]
    run_dir, overrides, label = Path(cfg.run.dir), seed_overrides(variant, seed), f"{variant.name!r} seed {seed}"
    marker = run_dir / MARKER
    recorded = {"overrides": overrides, "wall_s": 0.0, "finished": False}
    if marker.is_file():
        recorded = json.loads(marker.read_text(encoding="utf-8"))
        if recorded["overrides"] != overrides:  # resuming would mix two configs in one run
            raise ConfigError(f"variant {label}: {run_dir} was run with overrides {recorded['overrides']}, "
                              f"the sweep now gives {overrides}; delete {run_dir} or use another --out")
        if recorded["finished"] and finished(cfg):
            return recorded["wall_s"], True
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(recorded, indent=1), encoding="utf-8")
    log = run_dir / "train.log"
    start = time.perf_counter()
    with log.open("a", encoding="utf-8") as stream:
        process = subprocess.Popen(train_command(base, [*overrides, f"run.dir={run_dir}"], nproc),
                                   stdout=stream, stderr=subprocess.STDOUT)
        # Preemption (Slurm sends SIGTERM): the trainer saves a checkpoint and exits; a re-run resumes.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum))
        try:
            code = process.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
    recorded["wall_s"] += time.perf_counter() - start
    recorded["finished"] = code == 0 and finished(cfg)
    marker.write_text(json.dumps(recorded, indent=1), encoding="utf-8")
    if code != 0:
        raise RuntimeError(f"variant {label} failed with exit code {code}; see {log} (re-running the "
                           f"sweep resumes it from its last checkpoint)")
    if not recorded["finished"]:
        raise RuntimeError(f"variant {label} stopped before step {cfg.train.max_steps} (SIGTERM?); "
                           f"see {log}; re-run the sweep to resume it")
    return recorded["wall_s"], False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", default="configs/ablations/sweep.yaml", help="sweep file (format in its header)")
    parser.add_argument("--out", default="runs/ablate",
                        help="<out>/<variant>/seed<k>/ per run, summary.md, eval_loss.png")
    parser.add_argument("--seeds", type=int, default=1,
                        help="seeds per variant (its train.seed, +1, ...): initialization and data order")
    parser.add_argument("--reference", help="the variant the others are compared with (default: the first)")
    parser.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun when > 1)")
    parser.add_argument("--only", type=lambda text: text.split(","), metavar="A,B,...",
                        help="run only these variants (comma-separated), in sweep order")
    parser.add_argument("--stats-rows", type=int, default=256, metavar="N",
                        help="training rows per variant for the objective statistics table (0: no table)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="applied to every variant after its own overrides (train.max_steps=60)")


def select(variants: list[Variant], args: argparse.Namespace, sweep: Path) -> tuple[list[Variant], str]:
    """(the variants to run, the reference's name) from --only and --reference."""
    names = [v.name for v in variants]
    for flag, wanted in (("--only", args.only or []), ("--reference", [args.reference] if args.reference else [])):
        missing = sorted(set(wanted) - set(names))
        if missing:
            raise ConfigError(f"{flag}: unknown variant(s) {missing}; {sweep} has {names}")
    if args.only:
        variants = [v for v in variants if v.name in args.only or v.name == args.reference]
    return variants, args.reference or variants[0].name


def main(args: argparse.Namespace) -> int:
    sweep, out = Path(args.sweep), Path(args.out)
    try:
        for flag, value in (("--nproc", args.nproc), ("--seeds", args.seeds)):
            if value < 1:
                raise ConfigError(f"{flag}={value} must be >= 1")
        if args.stats_rows < 0:
            raise ConfigError(f"--stats-rows={args.stats_rows} must be >= 0")
        base, variants = load_sweep(sweep, out, args.overrides, args.seeds)
        variants, reference = select(variants, args, sweep)
        results: dict[str, list[RunResult]] = {}
        total = sum(len(v.runs) for v in variants)
        sweep_start, done = time.perf_counter(), 0
        for variant in variants:
            for seed, cfg in variant.runs.items():
                done += 1
                print(f"[ablate] {done}/{total} {variant.name} seed {seed}: {cfg.run.dir}", flush=True)
                wall, skipped = run_one(variant, seed, base, args.nproc)
                print(f"[ablate] {variant.name} seed {seed}: "
                      f"{'already finished, skipped' if skipped else f'done in {wall:.0f} s'}", flush=True)
                results.setdefault(variant.name, []).append(read_run(Path(cfg.run.dir), seed, wall))
        # each variant's training objective on its first rows (first seed's data order)
        stats = {v.name: training_objective_stats(v.cfg, args.stats_rows) for v in variants} if args.stats_rows else {}
    except RuntimeError as err:  # a run failed: its log says why (a ConfigError is cli/_errors.py's)
        print(f"ablate: {err}", file=sys.stderr)
        return 1
    from pretrain.train.ablation_plot import plot_eval_loss
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_eval_loss(results, out / "eval_loss.png")
    text = summary_markdown(variants, results, reference, stats, plot.name if plot else None)
    (out / "summary.md").write_text(text, encoding="utf-8")
    print(text, end="")
    missing = "" if plot else " (no plot: nothing was evaluated, or matplotlib is not installed)"
    print(f"[ablate] summary: {out / 'summary.md'}{missing}; this invocation took "
          f"{time.perf_counter() - sweep_start:.0f} s")
    return 0

