"""Run the ORIGINAL GLM collator (THUDM/GLM ``blocklm_utils.py``, ``ConstructBlockStrategy``) in this
process, for bench/collator.py. Its code is not part of this repository: it is read at bench time from
a path the user gives (the file, a checkout holding it, or a bare git clone: ``git show HEAD:...``) and
executed as is, with the modules it imports that are not installable stubbed: ``mpu`` (Megatron's model
parallel utilities; one data-parallel rank) and ``utils.print_rank_0`` (silent). torch, numpy and
scipy are the real ones. Its tokenizer is a stand-in that answers the calls the collator makes
(``get_command(name).Id``, ``IdToToken``) with the ids of this project's special tokens.
"""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np

FILE = "blocklm_utils.py"
# the strategies of ours that the original implements, as its constructor arguments (task_mask: the
# [sMASK]/[gMASK] tokens of GLM-10B; block_mask_prob and short_seq_prob stay 0 as in our presets)
GLM_MODES = {
    "token": dict(bert_prob=1.0, gap_sentence_prob=0.0),
    "sentence": dict(bert_prob=0.0, gap_sentence_prob=1.0),
    "document": dict(bert_prob=0.0, gap_sentence_prob=0.0),
    "glm-10b": dict(bert_prob=0.5, gap_sentence_prob=0.3),
    "glm-130b": dict(bert_prob=0.3, gap_sentence_prob=0.0),  # GLM-130B's 30 % [MASK], 70 % [gMASK] mix
}


def read_source(path: Path) -> str:
    """blocklm_utils.py's text from the file, a directory holding it, or a (bare) git repository."""
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if (path / FILE).is_file():
        return (path / FILE).read_text(encoding="utf-8")
    shown = subprocess.run(["git", f"--git-dir={path}", "show", f"HEAD:{FILE}"], capture_output=True, text=True)
    if shown.returncode != 0:
        shown = subprocess.run(["git", "-C", str(path), "show", f"HEAD:{FILE}"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise FileNotFoundError(f"{path}: no {FILE} there, and not a git repository holding one")
    return shown.stdout


def load_module(path: Path) -> types.ModuleType:
    """The original module, executed with ``mpu`` and ``utils`` stubbed only while it imports them."""
    mpu = types.ModuleType("mpu")
    mpu.get_data_parallel_rank = lambda: 0
    mpu.get_data_parallel_world_size = lambda: 1
    utils = types.ModuleType("utils")
    utils.print_rank_0 = lambda *args, **kwargs: None
    module = types.ModuleType("glm_blocklm_utils")
    module.__file__ = str(path)
    saved = {name: sys.modules.get(name) for name in ("mpu", "utils")}
    sys.modules.update(mpu=mpu, utils=utils)
    try:
        exec(compile(read_source(path), f"{path}:{FILE}", "exec"), module.__dict__)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name)
            else:
                sys.modules[name] = previous
    return module


class Tokenizer:
    """What ConstructBlockStrategy asks its tokenizer: command ids by name and token text by id (the
    text of a sentence-end id holds a '.', so its sentence splitting finds the same sentences as ours)."""

    def __init__(self, special, vocab_size: int, sentence_end_ids: np.ndarray):
        commands = {"ENC": special.cls, "eos": special.eos, "MASK": special.mask, "sMASK": special.smask,
                    "gMASK": special.gmask, "sop": special.sop, "eop": special.eop, "pad": special.pad}
        self.commands = {name: SimpleNamespace(Id=int(i)) for name, i in commands.items()}
        self.texts = [f"w{i}" for i in range(vocab_size)]
        for i in sentence_end_ids:
            self.texts[int(i)] += "."

    def get_command(self, name: str) -> SimpleNamespace:
        return self.commands[name]

    def IdToToken(self, token_id: int) -> str:  # noqa: N802 (the original's name)
        return self.texts[token_id]

    def DecodeIds(self, ids) -> str:  # noqa: N802
        return " ".join(self.texts[int(i)] for i in ids)


def original_collator(module: types.ModuleType, mode: str, special, seq_len: int, vocab_size: int,
                      sentence_end_ids: np.ndarray):
    """``texts -> batch``: ConstructBlockStrategy.construct_blocks on one-document rows (cls ... eos),
    configured as our strategy ``mode`` (15 % token spans of Poisson(3) lengths up to 39, [sMASK]
    sentences covering 15 %, [gMASK] spans of 50-100 % of the document, half of them suffixes)."""
    strategy = module.ConstructBlockStrategy(
        SimpleNamespace(eod_token=special.eos), Tokenizer(special, vocab_size, sentence_end_ids), seq_len,
        **GLM_MODES[mode], gpt_infill_prob=0.5, gpt_min_ratio=0.5, bert_ratio=0.15, gap_sentence_ratio=0.15,
        average_block_length=3, max_block_length=40, task_mask=True)
    return lambda texts: strategy.construct_blocks([{"text": t, "loss_mask": np.ones(len(t), dtype=np.int64)}
                                                    for t in texts])
