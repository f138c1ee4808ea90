"""Instruction records -> (prompt, response) texts -> token ids with the prompt length, for preprocess.

A record is either a pair, ``{"prompt": ..., "response": ...}`` (field names configurable; several
prompt fields are joined by a blank line, e.g. Alpaca's instruction + input), or a chat,
``{"messages": [{"role": ..., "content": ...}, ...]}``. A chat gives one sample per assistant turn:
the prompt is every turn before it, rendered with ``turn_template``, followed by the assistant's
header; the response is that turn's content. So every assistant reply gets loss exactly once, under
the one [gMASK] span per sample of the GLM layout (``turns="last"`` keeps only the final reply).

Prompt and response are tokenized separately, so the boundary is a token boundary. A record with
an empty response (or a chat without an assistant reply) gives no sample and is counted as empty;
a record with neither shape is refused with its input and row.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TURNS = ("each", "last")


@dataclass(frozen=True)
class InstructionFormat:
    prompt_fields: tuple[str, ...] = ("prompt",)  # joined by a blank line, empty ones left out
    response_field: str = "response"
    messages_field: str = "messages"  # a chat: list of {role, content}; takes precedence when present
    assistant_role: str = "assistant"
    turn_template: str = "<|{role}|>\n{content}"  # GLM-4's chat layout (role tokens are text unless special)
    turns: str = "each"  # "each": one sample per assistant turn; "last": the final reply only

    def validate(self) -> "InstructionFormat":
        if self.turns not in TURNS:
            raise ValueError(f"instruction turns={self.turns!r} must be one of {TURNS}")
        if "{content}" not in self.turn_template or "{role}" not in self.turn_template:
            raise ValueError(f"turn template {self.turn_template!r} must contain {{role}} and {{content}}")
        if not self.prompt_fields:
            raise ValueError("give at least one prompt field")
        return self

    def describe(self) -> dict:
        return asdict(self)


def _chat_pairs(messages: list, fmt: InstructionFormat, where: str) -> list[tuple[str, str]]:
    rendered, pairs = [], []
    header = fmt.turn_template.split("{content}")[0].format(role=fmt.assistant_role)
    for turn in messages:
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise ValueError(f"{where}: chat turn {turn!r} is not a {{role, content}} object")
        content = turn["content"] or ""
        if turn["role"] == fmt.assistant_role and content.strip():
            pairs.append(("".join(rendered) + header, content))
        rendered.append(fmt.turn_template.format(role=turn["role"], content=content))
    return pairs[-1:] if fmt.turns == "last" else pairs


def record_pairs(row: dict, fmt: InstructionFormat, where: str) -> list[tuple[str, str]]:
    """The (prompt, response) texts of one record; ``where`` names the input and row in errors."""
    messages = row.get(fmt.messages_field)
    if messages is not None:
        if not isinstance(messages, list):
            raise ValueError(f"{where}: field {fmt.messages_field!r} must be a list of turns, got "
                             f"{type(messages).__name__}")
        return _chat_pairs(messages, fmt, where)
    if fmt.response_field not in row or not any(f in row for f in fmt.prompt_fields):
        raise ValueError(f"{where}: an instruction record needs {fmt.messages_field!r} (chat) or "
                         f"{list(fmt.prompt_fields)} + {fmt.response_field!r} fields, found {sorted(row)}; "
                         f"pass --prompt-field / --response-field / --messages-field")
    response = row[fmt.response_field] or ""
    if not response.strip():
        return []
    prompt = "\n\n".join(row[f] for f in fmt.prompt_fields if row.get(f))
    return [(prompt, response)]


def encode_pairs(tokenizer, pairs: list[tuple[str, str]], dtype: np.dtype) -> list[tuple[np.ndarray, int]]:
    """(prompt ids + response ids, prompt length) per pair, in two batched tokenizer calls."""
    if not pairs:
        return []
    prompts = tokenizer.encode_batch_fast([p for p, _ in pairs], add_special_tokens=False)
    responses = tokenizer.encode_batch_fast([r for _, r in pairs], add_special_tokens=False)
    return [(np.asarray(p.ids + r.ids, dtype=dtype), len(p.ids)) for p, r in zip(prompts, responses)]
