"""``python -m pretrain config --show``: every key with its type, default (or a file's value) and help,
generated from the section dataclasses; docs/config.md is its Markdown and must not go stale."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from pretrain.__main__ import main
from pretrain.cli.config import field_help, render_markdown, sections, section_rows, type_name

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "python -m pretrain config --show --markdown > docs/config.md"


def test_docs_config_md_is_the_generated_reference():
    assert (ROOT / "docs" / "config.md").read_text(encoding="utf-8") == render_markdown(), \
        f"docs/config.md is stale: regenerate it with `{REGENERATE}`"


def test_every_key_has_a_type_a_default_and_help():
    rows = [row for name, cls in sections().items() for row in section_rows(name, cls, None)]
    assert len({row.key for row in rows}) == len(rows) > 80
    missing = [row.key for row in rows if not row.help]
    assert not missing, f"config fields without a comment (it is their --show help): {missing}"
    assert all(row.type and row.value for row in rows)
    by_key = {row.key: row for row in rows}
    assert by_key["train.init_device"][1:3] == ("full | meta", "full")
    assert by_key["train.lr_decay_steps"][1:3] == ("int | null", "null")
    assert by_key["train.betas"][1:3] == ("[float, float]", "[0.9, 0.95]")
    assert by_key["metrics.wandb.mode"][1:3] == ("online | offline", "online")  # nested sections flatten
    assert by_key["model.hidden_size"].value == "required"  # no preset by default


def test_help_joins_the_comment_above_and_the_trailing_comment():
    @dataclasses.dataclass
    class Section:
        plain: int = 1
        # first line of a block,
        # second line
        blocked: int = 2  # and a trailing remark

        spaced: int = 3  # only trailing

    assert field_help(Section) == {"plain": "", "blocked": "first line of a block, second line and a trailing remark",
                                   "spaced": "only trailing"}
    assert type_name(typing.Optional[dict[str, float]]) == "{str: float} | null"


def test_show_with_a_config_file_lists_its_values(capsys):
    assert main(["config", "--show", "--config", str(ROOT / "configs" / "smoke.yaml"), "train.max_steps=7"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if "=" in line}
    assert lines["train.max_steps"].endswith("= 7")  # the override
    assert lines["model.preset"].endswith("= glm-tiny") and lines["model.num_layers"].endswith("= 2")  # preset's
    assert lines["data.corpus"].endswith("= embedded") and lines["train.seq_len"].endswith("= 128")  # the file's
    assert lines["model.vocab_size"].endswith("= tokenizer's")


def test_show_refuses_overrides_without_a_config(capsys):
    assert main(["config", "--show", "train.lr=1"]) == 2
    assert capsys.readouterr().err == "config: overrides ['train.lr=1'] need --config FILE to apply to\n"
