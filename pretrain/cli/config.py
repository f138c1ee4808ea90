"""``python -m pretrain config --show [--config FILE [key=value ...]] [--markdown]``: every config key
with its type, default (or the file's value) and one-line help, generated from the section dataclasses.

The help of a field is its comment in the dataclass (the comment lines right above it and its trailing
comment), so a new field documents itself where it is declared. ``docs/config.md`` is this command's
``--markdown`` output; tests/test_config_docs.py fails when it is stale.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import types
import typing
from typing import Any, Iterator, NamedTuple

import yaml

from pretrain.config import to_dict
from pretrain.model.config import ModelConfig
from pretrain.model.presets import PRESETS, ModelSection
from pretrain.train.config import Config, load_config

MARKDOWN_HEADER = """# Config reference

Every key of a run config, generated from the section dataclasses by
`python -m pretrain config --show --markdown > docs/config.md` (the help is each field's comment in
its dataclass; `tests/test_config_docs.py` fails when this page is stale). A key is set in the YAML
file (`train: {lr: 3.0e-4}`) or as a dotted override: `python -m pretrain train --config F train.lr=3e-4`.
`python -m pretrain config --show --config F` lists a file's values instead of the defaults.
"""
MODEL_NOTE = ("a preset name plus ModelConfig fields overriding it (without a preset, the fields with no default "
              "are required); without vocab_size the tokenizer's vocabulary, padded to 128, is used")


class Row(NamedTuple):
    key: str
    type: str
    value: str
    help: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--show", action="store_true", help="list every key (the default and only action)")
    parser.add_argument("--config", help="show this run config's values (after overrides) instead of the defaults")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables, as in docs/config.md")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides applied to --config")


def main(args: argparse.Namespace) -> int:
    if args.overrides and not args.config:
        raise ValueError(f"overrides {args.overrides} need --config FILE to apply to")
    cfg = load_config(args.config, args.overrides) if args.config else None
    print(render_markdown(cfg) if args.markdown else render_text(cfg), end="")
    return 0


# ----------------------------------------------------------------------------- rows
def sections() -> dict[str, type]:
    """Section name -> its dataclass, in the order of the top-level Config."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def section_rows(name: str, cls: type, cfg: Config | None) -> list[Row]:
    if cls is ModelSection:
        return model_rows(cfg.model if cfg else None)
    return list(_dataclass_rows(name, cls, getattr(cfg, name) if cfg else None))


def _dataclass_rows(prefix: str, cls: type, obj: Any) -> Iterator[Row]:
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    for field in dataclasses.fields(cls):
        key, tp = f"{prefix}.{field.name}", hints[field.name]
        value = getattr(obj, field.name) if obj is not None else _default(field)
        if dataclasses.is_dataclass(tp):  # a nested section: one row per leaf
            yield from _dataclass_rows(key, tp, value if obj is not None else None)
        else:
            yield Row(key, type_name(tp), format_value(value), helps.get(field.name, ""))


def model_rows(section: ModelSection | None) -> list[Row]:
    """``model.preset`` and every ModelConfig field: the preset's value (or the default), or the override."""
    preset = section.preset if section else None
    base = PRESETS[preset] if preset else None
    hints, helps = typing.get_type_hints(ModelConfig), field_help(ModelConfig)
    rows = [Row("model.preset", "str | null", format_value(preset), f"{MODEL_NOTE}; one of {', '.join(PRESETS)}")]
    for field in dataclasses.fields(ModelConfig):
        if section is not None and field.name in section.fields:
            value = format_value(section.fields[field.name])
        elif field.name == "vocab_size":
            value = "tokenizer's"
        elif base is not None:
            value = format_value(getattr(base, field.name))
        elif field.default is dataclasses.MISSING:
            value = "required"
        else:
            value = format_value(field.default)
        rows.append(Row(f"model.{field.name}", type_name(hints[field.name]), value, helps.get(field.name, "")))
    return rows


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


# ----------------------------------------------------------------------------- help, types, values
@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Field name -> its comment as one line: the comment lines right above the field (a blank line or
    code ends them) followed by its trailing comment, or its ``metadata["help"]``. Fields of base classes
    come from their own source; a class made at run time (``dataclasses.make_dataclass``) has none."""
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(cls) if "help" in f.metadata}
    for klass in reversed(cls.__mro__):
        if klass is not object and klass.__dict__.get("__dataclass_fields__") and _has_source(klass):
            helps.update(_comment_help(klass))
    return helps


def _has_source(cls: type) -> bool:
    try:
        inspect.getsource(cls)
    except (OSError, TypeError):
        return False
    return True


def _comment_help(cls: type) -> dict[str, str]:
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    is_comment_line = lambda number: lines[number - 1].lstrip().startswith("#")  # noqa: E731
    helps = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, number = [], node.lineno - 1
        while number >= 1 and is_comment_line(number):
            above.insert(0, comments[number])
            number -= 1
        trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1)
                    if n in comments and not is_comment_line(n)]
        helps[node.target.id] = " ".join(above + trailing)
    return helps


def type_name(tp: Any) -> str:
    """A config type as the YAML a user writes: ``int``, ``float | null``, ``full | meta``, ``{str: float}``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if origin is typing.Literal:
        return " | ".join(str(arg) for arg in args)
    if origin is tuple:
        return "[" + ", ".join(type_name(arg) for arg in args) + "]"
    if origin is list:
        return f"[{type_name(args[0]) if args else 'any'}, ...]"
    if origin is dict:
        key, value = args if args else (Any, Any)
        return f"{{{type_name(key)}: {type_name(value)}}}"
    return getattr(tp, "__name__", str(tp))


def format_value(value: Any) -> str:
    """A value as it would be written in YAML (flow style, one line)."""
    text = yaml.safe_dump(to_dict(value), default_flow_style=True, width=1 << 16, allow_unicode=True)
    return text.split("\n...")[0].strip()


# ----------------------------------------------------------------------------- output
def render_text(cfg: Config | None = None) -> str:
    out = []
    for name, cls in sections().items():
        rows = section_rows(name, cls, cfg)
        width_key, width_type = (max(len(getattr(r, col)) for r in rows) for col in ("key", "type"))
        out.append(f"[{name}]")
        for row in rows:
            out.append(f"  {row.key:<{width_key}}  {row.type:<{width_type}}  = {row.value}")
            if row.help:
                out.append(f"      {row.help}")
        out.append("")
    return "\n".join(out)


def render_markdown(cfg: Config | None = None) -> str:
    out = [MARKDOWN_HEADER]
    for name, cls in sections().items():
        out.append(f"## `{name}`\n")
        doc = inspect.getdoc(cls) or ""
        if doc and not doc.startswith(f"{cls.__name__}("):  # not the signature dataclasses put in
            out.append(" ".join(doc.split("\n\n")[0].split()) + "\n")
        out.append("| key | type | " + ("value" if cfg else "default") + " | help |\n|---|---|---|---|")
        for row in section_rows(name, cls, cfg):
            cells = [f"`{row.key}`", _cell(row.type), f"`{row.value}`" if row.value else "", _cell(row.help)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
