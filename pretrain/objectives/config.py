"""``ObjectiveConfig``: which masking strategies, in which mixture, the switches they share, and one
section per registered strategy (``objective.<name>:``, that strategy's own typed options).

The sections are not written out here: ``ObjectiveConfig`` is ``ObjectiveSwitches`` plus one field per
entry of the strategy registry, so a new strategy file brings its section with it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from pretrain.objectives.strategies import STRATEGIES

# Named mixtures of the GLM papers: GLM-Base/Large (token only), GLM-10B (token/sentence/document),
# GLM-130B (30% [MASK], 70% [gMASK]).
PRESETS: dict[str, dict[str, float]] = {
    "glm": {"token": 1.0},
    "glm-10b": {"token": 0.5, "sentence": 0.3, "document": 0.2},
    "glm-130b": {"token": 0.3, "document": 0.7},
}


@dataclass
class ObjectiveSwitches:
    # A preset (glm, glm-10b, glm-130b), one registered strategy (token, sentence, document, causal,
    # t5, ul2, fim, prefix_lm, mlm, ...), or "mixture" with explicit weights in `mixture`.
    strategy: str = "glm"
    # Strategy name -> weight (any positive scale, normalised); only with strategy == "mixture".
    mixture: dict[str, float] = field(default_factory=dict)
    # "batch": one strategy per global batch, as GLM does; "sample": one per sample (row).
    mixture_level: Literal["batch", "sample"] = "batch"
    # Part-B blocks in random order (GLM) or left to right (ablation).
    shuffle_order: bool = True
    # Block positions 1..len+1 inside each Part-B block (GLM), or all 1 (ablation).
    block_positions: bool = True
    # First positions of a [gMASK] block (document suffix or infill, causal, prefix_lm, UL2's S, FIM's
    # plain documents, instruction responses): "mask": every token at its [gMASK]'s position (GLM's
    # 2-D scheme); "continue": they prolong the text, sop at the [gMASK]'s position + 1, then + 2, ...
    # (GLM-130B with 1-D RoPE); "auto": continue for a model with rope_1d positions, else mask. Other
    # blocks stay at their mask. Set auto for rope_1d models; the default keeps older runs as trained.
    gmask_positions: Literal["auto", "mask", "continue"] = "mask"
    # "packed": each document is its own segment (no cross-document attention); "legacy": the whole
    # row is one GLM sample (one segment, as the original GLM).
    layout: Literal["packed", "legacy"] = "packed"
    # Span boundaries keep whole "character"s (never inside a multi-byte character of byte-level BPE)
    # or whole "word"s (whole-word masking), or fall between any two "token"s. Needs the tokenizer's
    # tables (the data loader passes them); without them spans fall between any tokens.
    boundaries: Literal["token", "character", "word"] = "character"

    def weights(self) -> dict[str, float]:
        """Normalised strategy -> probability, only strategies with positive weight, in the order of
        the preset or the mixture (that order fixes which draw picks which strategy)."""
        if self.strategy == "mixture":
            raw = self.mixture
        elif self.strategy in PRESETS:
            raw = PRESETS[self.strategy]
        else:
            raw = {self.strategy: 1.0}
        total = sum(raw.values())
        return {name: weight / total for name, weight in raw.items() if weight > 0}

    def section(self, name: str):
        """The options of strategy ``name`` (its sub-config)."""
        return getattr(self, name)

    def validate(self) -> None:
        known = (*PRESETS, *STRATEGIES, "mixture")
        if self.strategy not in known:
            raise ValueError(f"strategy={self.strategy!r} is unknown; use one of {list(known)}")
        if self.strategy == "mixture":
            unknown = sorted(set(self.mixture) - set(STRATEGIES))
            if unknown:
                raise ValueError(f"mixture has unknown strategy name(s) {unknown}; "
                                 f"valid names are {list(STRATEGIES)}")
            bad = {k: v for k, v in self.mixture.items() if not v >= 0}
            if bad or sum(self.mixture.values()) <= 0:
                raise ValueError(f"mixture={self.mixture!r} needs non-negative weights with a positive sum")
        elif self.mixture:
            raise ValueError(f"mixture={self.mixture!r} is only used with strategy='mixture', "
                             f"not strategy={self.strategy!r}; remove it or set strategy: mixture")
        for name in STRATEGIES:
            try:
                self.section(name).validate()
            except ValueError as err:
                raise ValueError(f"{name}.{err}") from None


def resolve_gmask_positions(cfg: ObjectiveSwitches, position_encoding: str) -> ObjectiveSwitches:
    """``cfg`` with gmask_positions "auto" made "continue" for a model with 1-D positions
    (``position_encoding`` "rope_1d": nothing else tells the tokens of a [gMASK] block apart) and
    "mask" otherwise; any other value unchanged. Called wherever an objective meets its model's config."""
    if cfg.gmask_positions != "auto":
        return cfg
    return dataclasses.replace(cfg, gmask_positions="continue" if position_encoding == "rope_1d" else "mask")


def prolongs_gmask_blocks(gmask_positions: str) -> bool:
    """Whether [gMASK] blocks prolong the text's positions ("continue") or stay at the mask's ("mask");
    an unresolved "auto" is refused: only the model's position encoding decides it."""
    if gmask_positions not in ("mask", "continue"):
        raise ValueError(f"objective.gmask_positions={gmask_positions!r} must be resolved to 'mask' or 'continue' "
                         f"with the model's position encoding first (objectives.resolve_gmask_positions)")
    return gmask_positions == "continue"


ObjectiveConfig = dataclasses.make_dataclass(
    "ObjectiveConfig",
    [(name, cls.Config, field(default_factory=cls.Config, metadata={"help": f"options of the {name} strategy"}))
     for name, cls in STRATEGIES.items()],
    bases=(ObjectiveSwitches,))
ObjectiveConfig.__module__ = __name__
ObjectiveConfig.__doc__ = "The objective section: the shared switches, then one section per strategy."
