"""How every verb of ``python -m pretrain`` ends on an error a person can act on: one line on stderr
(``<verb>: <message>``), printed once (by rank 0 under torchrun), exit code 2. ``--debug`` or
``PRETRAIN_DEBUG=1`` re-raises instead, with the traceback. Anything else (a bug) keeps its traceback.

``pretrain/__main__.py`` runs every verb through ``run_verb``, so a new verb needs nothing; code that
calls a verb's ``main`` itself can wrap it the same way: ``sys.exit(run_verb("name", main, args))``.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Callable

USAGE_EXIT_CODE = 2  # argparse's, for a command line it cannot use: the same family of mistake

# Environment faults a person fixes outside the code: missing or misplaced files, permissions, space.
_ENVIRONMENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of one line (also PRETRAIN_DEBUG=1)")


def is_user_error(err: BaseException) -> bool:
    """Refusals our code words for a person (ValueError and its subclasses: ConfigError, corrupt data,
    resume mismatches), environment faults, and errors that say so (``user_error = True``)."""
    if getattr(err, "user_error", False) or isinstance(err, (ValueError, *_ENVIRONMENT_ERRORS)):
        return True
    return isinstance(err, OSError) and err.errno in _ENVIRONMENT_ERRNOS


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def run_verb(name: str, main: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """``main(args)`` with the error contract above; returns the exit code."""
    debug = getattr(args, "debug", False) or os.environ.get("PRETRAIN_DEBUG", "") not in ("", "0")
    try:
        return int(main(args) or 0)
    except Exception as err:
        if debug or not is_user_error(err):
            raise
        if _is_rank_zero():
            print(f"{name}: {one_line(err)}", file=sys.stderr, flush=True)
        return USAGE_EXIT_CODE
