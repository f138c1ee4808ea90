"""GLM special tokens (DESIGN.md contract 3): one id per role, fixed at the bottom of the vocabulary.

The tokenizer places these strings at these ids; the objective and the collator only ever use the ids.
No two roles share an id (the original GLM-10B-Chinese gave [gMASK] and eop the same id).
"""
from __future__ import annotations

from dataclasses import astuple, dataclass, fields


@dataclass(frozen=True)
class SpecialTokens:
    pad: int = 0
    eos: int = 1  # end of document
    cls: int = 2  # GLM's ENC token, starts every document
    mask: int = 3  # [MASK]: token-level spans
    smask: int = 4  # [sMASK]: sentence spans
    gmask: int = 5  # [gMASK]: document-level span
    sop: int = 6  # start of a Part-B block
    eop: int = 7  # end of a Part-B block

    def validate(self, vocab_size: int | None = None) -> "SpecialTokens":
        """Distinct, non-negative ids, below ``vocab_size`` when it is given."""
        ids = astuple(self)
        for field in fields(self):
            value = getattr(self, field.name)
            if value < 0 or vocab_size is not None and value >= vocab_size:
                upper = "" if vocab_size is None else f", {vocab_size}"
                raise ValueError(
                    f"special token {field.name}={value} is outside the vocabulary [0{upper}); "
                    f"choose a non-negative id below vocab_size")
        if len(set(ids)) != len(ids):
            roles = {}
            for field in fields(self):
                roles.setdefault(getattr(self, field.name), []).append(field.name)
            clash = {i: r for i, r in roles.items() if len(r) > 1}
            raise ValueError(f"special token ids must be distinct, but {clash} collide; every role needs its own id")
        return self


# The literal strings the tokenizer registers at the ids above, in id order.
SPECIAL_TOKEN_STRINGS = ("<pad>", "<|endoftext|>", "[CLS]", "[MASK]", "[sMASK]", "[gMASK]", "<sop>", "<eop>")
DEFAULT_SPECIAL_TOKENS = SpecialTokens()
