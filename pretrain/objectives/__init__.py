"""GLM's autoregressive blank-infilling objective and the objectives it is ablated against: pure numpy,
no torch.distributed.

``build_sample`` is the deterministic core (docs/contracts.md §1-2); strategies (one module each in
``strategies/``, registered by name) draw spans; ``GLMCollator`` turns ``TextSample``s into the batch
dict of docs/architecture.md.
"""
from pretrain.objectives.boundaries import TokenTables
from pretrain.objectives.collator import INSTRUCTION, GLMCollator
from pretrain.objectives.config import PRESETS, ObjectiveConfig, prolongs_gmask_blocks, resolve_gmask_positions
from pretrain.objectives.infill import InfillSample, build_sample
from pretrain.objectives.packing import TextSample, attention_matrix, raw_length
from pretrain.objectives.strategies import STRATEGIES, Strategy, register
from pretrain.objectives.strategies.sentence import sentence_end_ids


def declared_special_tokens(*cfgs: ObjectiveConfig) -> dict[str, str]:
    """The special-token roles (beyond the core ones) that the strategies of ``cfgs`` need."""
    return {role: text for cfg in cfgs for name in cfg.weights()
            for role, text in STRATEGIES[name].declared_tokens(cfg.section(name)).items()}


__all__ = [
    "GLMCollator", "INSTRUCTION", "ObjectiveConfig", "PRESETS", "STRATEGIES", "Strategy", "register",
    "InfillSample", "build_sample", "TextSample", "attention_matrix", "raw_length", "TokenTables",
    "declared_special_tokens", "sentence_end_ids", "prolongs_gmask_blocks", "resolve_gmask_positions",
]
