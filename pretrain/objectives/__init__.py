"""GLM's autoregressive blank-infilling objective: pure numpy, no torch.distributed.

``build_sample`` is the deterministic core (docs/contracts.md §1-2); strategies draw spans;
``GLMCollator`` turns ``TextSample``s into the batch dict of docs/architecture.md.
"""
from pretrain.objectives.collator import GLMCollator
from pretrain.objectives.config import PRESETS, STRATEGY_NAMES, ObjectiveConfig
from pretrain.objectives.infill import InfillSample, build_sample
from pretrain.objectives.packing import TextSample, attention_matrix, raw_length
from pretrain.objectives.strategies import (CausalStrategy, DocumentStrategy, SentenceStrategy, TokenStrategy,
                                            build_strategies, declared_special_tokens, sentence_end_ids)

__all__ = [
    "GLMCollator", "ObjectiveConfig", "PRESETS", "STRATEGY_NAMES", "InfillSample", "build_sample",
    "TextSample", "attention_matrix", "raw_length", "TokenStrategy", "SentenceStrategy",
    "DocumentStrategy", "CausalStrategy", "build_strategies", "declared_special_tokens", "sentence_end_ids",
]
