"""GLM special tokens by role (docs/contracts.md §3): each role has its own id in the tokenizer in use.

The ids are never assumed: ``pretrain.data.tokenizer.resolve_special_tokens`` finds each role's token
by name in the tokenizer (ours or an existing one, e.g. GLM-4's with its specials above id 150,000)
and appends the missing ones at the end of the vocabulary. The objective and the collator only ever
use the ids found. No two roles share an id (the original GLM-10B-Chinese gave [gMASK] and eop the
same id).

Core roles are needed by every run; a strategy may declare more (T5 sentinels, UL2 mode tokens, FIM
sentinels) as ``{role: token string}``, held in ``SpecialTokens.extra``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Mapping

# role -> the token string our tokenizer registers (and the first name looked up in any tokenizer)
CORE_ROLES: dict[str, str] = {
    "pad": "<pad>",
    "eos": "<|endoftext|>",  # end of document
    "cls": "[CLS]",  # GLM's ENC token, starts every document
    "mask": "[MASK]",  # token-level spans
    "smask": "[sMASK]",  # sentence spans
    "gmask": "[gMASK]",  # document-level span
    "sop": "<sop>",  # start of a Part-B block
    "eop": "<eop>",  # end of a Part-B block
}
# Other names existing tokenizers give a role, tried in order after the canonical one (GLM-1's
# tokenizers call sop/eop <|startofpiece|>/<|endofpiece|>; most others spell pad/eos differently).
ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<|pad|>", "<|padding|>"),
    "eos": ("</s>", "<eos>", "<|end_of_text|>", "[EOS]"),
    "cls": ("<cls>", "[ENC]"),
    "sop": ("<|startofpiece|>",),
    "eop": ("<|endofpiece|>",),
}


@dataclass(frozen=True)
class SpecialTokens:
    """Id of every role. The defaults are the toy layout of the tests (our own trained tokenizer also
    puts the core roles first); real runs take theirs from ``resolve_special_tokens``."""
    pad: int = 0
    eos: int = 1
    cls: int = 2
    mask: int = 3
    smask: int = 4
    gmask: int = 5
    sop: int = 6
    eop: int = 7
    extra: Mapping[str, int] = dataclasses.field(default_factory=dict)  # strategy-declared role -> id

    def __getitem__(self, role: str) -> int:
        """Id of a core or declared role; a missing role names the strategy's job."""
        if role in CORE_ROLES:
            return getattr(self, role)
        if role not in self.extra:
            raise KeyError(f"special token role {role!r} was not resolved for this run; the strategy that uses "
                           f"it must declare it (Strategy.special_tokens) so the tokenizer lookup finds or adds it")
        return self.extra[role]

    def roles(self) -> dict[str, int]:
        """Every role -> id, core roles first."""
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}, **self.extra}

    def validate(self, vocab_size: int | None = None) -> "SpecialTokens":
        """Distinct, non-negative ids, below ``vocab_size`` when it is given."""
        roles = self.roles()
        for role, value in roles.items():
            if value < 0 or vocab_size is not None and value >= vocab_size:
                upper = "" if vocab_size is None else f", {vocab_size}"
                raise ValueError(
                    f"special token {role}={value} is outside the vocabulary [0{upper}); "
                    f"choose a non-negative id below vocab_size")
        if len(set(roles.values())) != len(roles):
            by_id: dict[int, list[str]] = {}
            for role, value in roles.items():
                by_id.setdefault(value, []).append(role)
            clash = {i: r for i, r in by_id.items() if len(r) > 1}
            raise ValueError(f"special token ids must be distinct, but {clash} collide; every role needs its own id")
        return self
