"""UL2's mixture of denoisers (Tay et al. 2022, "UL2: Unifying Language Learning Paradigms", §3.1):
R-denoisers (T5 span corruption, short spans: mean 3, 15%), X-denoisers (extreme: long spans, mean
32, or a high rate, 50%) and the S-denoiser (prefix LM), one drawn per document, each announced by
its paradigm token at the start of the document (§3.1.3 mode switching: [NLU] for R, [NLG] for X,
[S2S] for S). The defaults are the decoder-only mixture of UL2R (Tay et al. 2022, "Transcending
Scaling Laws with 0.1% Extra Compute"): half S, the rest R and the two X; every denoiser, its rate,
span length, token and weight is configurable (``objective.ul2.denoisers``).

Layout: R and X as ``t5`` (sentinels in Part A, one Part-B block of ``sentinel_k span_k``), S as
``prefix_lm`` ([gMASK] | sop suffix); the mode token is an inserted Part-A token before the
document's first token (no loss).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.infill import Spans
from pretrain.objectives.spans import snap
from pretrain.objectives.strategies.base import (SENTINELS, DocumentRoom, Strategy, check_fraction,
                                                 gmask_spans, register)
from pretrain.objectives.strategies.prefix_lm import prefix_split
from pretrain.objectives.strategies.t5 import corruption_room, sentinel_spans, span_corruption

MODES = {"mode_nlu": "[NLU]", "mode_nlg": "[NLG]", "mode_s2s": "[S2S]"}


@dataclass
class Denoiser:
    # "span": T5 span corruption (R and X denoisers); "prefix": prefix LM (the S-denoiser).
    kind: Literal["span", "prefix"] = "span"
    # span only: fraction of the tokens to corrupt and the mean span length.
    mask_ratio: float = 0.15
    mean_span_length: float = 3.0
    # The paradigm token before the document: nlu ([NLU]), nlg ([NLG]) or s2s ([S2S]).
    mode: Literal["nlu", "nlg", "s2s"] = "nlu"
    # Relative weight of this denoiser in the mixture.
    weight: float = 1.0

    def validate(self) -> None:
        check_fraction("mask_ratio", self.mask_ratio)
        if not (math.isfinite(self.mean_span_length) and self.mean_span_length >= 1):
            raise ValueError(f"mean_span_length={self.mean_span_length} must be >= 1")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight={self.weight} must be >= 0")


def default_denoisers() -> dict[str, Denoiser]:
    return {"R": Denoiser("span", 0.15, 3.0, "nlu", 0.25),
            "X_long": Denoiser("span", 0.15, 32.0, "nlg", 0.125),
            "X_dense": Denoiser("span", 0.5, 3.0, "nlg", 0.125),
            "S": Denoiser("prefix", mode="s2s", weight=0.5)}


@dataclass
class UL2Config(DocumentRoom):
    # Name -> denoiser; one is drawn per document in proportion to the weights.
    denoisers: dict[str, Denoiser] = field(default_factory=default_denoisers)

    def validate(self) -> None:
        super().validate()
        for name, denoiser in self.denoisers.items():
            try:
                denoiser.validate()
            except ValueError as err:
                raise ValueError(f"denoisers.{name}: {err}") from None
        if sum(d.weight for d in self.denoisers.values()) <= 0:
            raise ValueError(f"denoisers {sorted(self.denoisers)} need a positive total weight")


@register("ul2")
class UL2Strategy(Strategy):
    Config = UL2Config
    special_tokens = {**MODES, **SENTINELS}

    def __init__(self, cfg: UL2Config, context):
        super().__init__(cfg, context)
        self.denoisers = list(cfg.denoisers.items())
        weights = np.array([d.weight for _, d in self.denoisers])
        self.cum_weights = np.cumsum(weights / weights.sum())
        self.sentinels = self.sentinel_ids()
        self.modes = [self.special[f"mode_{d.mode}"] for _, d in self.denoisers]

    @classmethod
    def room(cls, cfg: UL2Config, n_tokens: int) -> int:
        spans = max(corruption_room(d.mask_ratio, d.mean_span_length, n_tokens) if d.kind == "span"
                    else cfg.document_room(n_tokens) for d in cfg.denoisers.values() if d.weight > 0)
        return spans + cfg.document_room(n_tokens, per_document=1)  # + one mode token per document

    def spans(self, docs):
        u = rng.uniform(docs.key, self.stream("denoiser"))
        choice = np.minimum(self.cum_weights.searchsorted(u, side="right"), len(self.denoisers) - 1)
        parts = []
        for index, (name, denoiser) in enumerate(self.denoisers):
            chosen = docs.select(choice == index)
            if len(chosen.start) == 0:
                continue
            if denoiser.kind == "span":
                streams = {p: self.stream(f"{name}/{p}") for p in ("count", "noise", "gaps")}
                start, end = span_corruption(chosen, denoiser.mask_ratio, denoiser.mean_span_length, streams)
                spans = sentinel_spans(chosen, *snap(chosen, start, end, self.stream(f"{name}/snap")), self.sentinels)
            else:
                start, end = prefix_split(chosen, self.stream(f"{name}/split"))
                spans = gmask_spans(start, end, self.special.gmask)
            mode = Spans(chosen.start, chosen.start, np.full(len(chosen.start), self.modes[index]),
                         inline=np.ones(len(chosen.start), dtype=bool))
            parts += [mode, spans]
        return Spans.merge(parts, self.special.sop), 0  # a mode token before the span at its start
