"""``python -m pretrain bench NAME [args]``: run one of the benchmark scripts in the checkout's bench/.

The scripts are not part of the installed package; this runs ``bench/NAME.py`` of the source tree
this package was imported from, as if it were ``python bench/NAME.py [args]``.
"""
from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="benchmark script in bench/ (collator, attention, data, preprocess_scale, "
                                     "train_step, generate, checkpoint, gpu_check, loss, plan_check)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script (try --help)")


def main(args: argparse.Namespace) -> int:
    if not BENCH_DIR.is_dir():
        print(f"bench: {BENCH_DIR} does not exist; the benchmarks ship with the source checkout, not the "
              f"installed package: run from a clone (pip install -e .)", file=sys.stderr)
        return 2
    names = available()
    if args.name not in names:
        print(f"bench: unknown benchmark {args.name!r}; valid names are {names}", file=sys.stderr)
        return 2
    script = BENCH_DIR / f"{args.name}.py"
    sys.argv = [str(script), *args.args]
    sys.path.insert(0, str(BENCH_DIR))  # as `python bench/NAME.py` would see it
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:  # the script's own exit (argparse errors, sys.exit(main()))
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)  # sys.exit("message"), as the interpreter would show it
        return 1
    return 0
