"""Presets with the original architectures' parameter tensor shapes (reference-glm-objective.md §5).

GLM-1's fused QKV [3H, H] is our q/k/v_proj stacked; GLM-130B's GeGLU dense_h_to_4h [2F, H] is
[up_proj; gate_proj]; GLM-4's gate_up_proj [2F, H] is [gate_proj; up_proj] (see export.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from pretrain.config import ConfigError, coerce_fields, from_dict
from pretrain.model.config import ModelConfig
from pretrain.model.glm import GLMModel


def _glm1(layers: int, hidden: int, heads: int, vocab: int, max_len: int, dropout: float = 0.1) -> ModelConfig:
    """GLM-1 trained with embedding, residual and attention-probability dropout 0.1 (THUDM/GLM scripts)."""
    return ModelConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                       ffn_hidden_size=4 * hidden, max_position_embeddings=max_len, dropout=dropout,
                       attention_dropout=dropout)


PRESETS: dict[str, ModelConfig] = {
    # GLM-1 (THUDM/GLM): pre-LN, learned 2-D positions, GeLU 4H, biases, tied head
    "glm-base": _glm1(12, 768, 12, 30592, 512),
    "glm-large": _glm1(24, 1024, 16, 30592, 512),
    "glm-10b": _glm1(48, 4096, 64, 50304, 1024),
    "glm-130b": ModelConfig(
        vocab_size=150528, hidden_size=12288, num_layers=70, num_heads=96, ffn_hidden_size=32768,
        max_position_embeddings=2048, position_encoding="rope_1d", norm_placement="deepnorm", mlp="geglu",
        embedding_grad_shrink=0.1),
    # the output layer is the word embedding (transformers ties it): 6,173,286,400 parameters, its "6.2B"
    "chatglm-6b": ModelConfig(
        vocab_size=130528, hidden_size=4096, num_layers=28, num_heads=32, ffn_hidden_size=16384,
        max_position_embeddings=2048, position_encoding="rope_2d", norm_placement="deepnorm"),
    # transformers GlmConfig() defaults (GLM-4-9B)
    "glm-4-9b": ModelConfig(
        vocab_size=151552, hidden_size=4096, num_layers=40, num_heads=32, num_kv_heads=2, head_dim=128,
        ffn_hidden_size=13696, max_position_embeddings=131072, position_encoding="rope_1d",
        partial_rotary_factor=0.5, rope_interleaved=True, norm="rmsnorm", norm_eps=1.5625e-7, mlp="swiglu",
        qkv_bias=True, bias=False, tie_embeddings=False),
    # tests and smoke runs: GLM-1 shaped without dropout (runs compare losses across layouts);
    # heads, ffn and vocab even so TP=2 divides everything
    "glm-tiny": _glm1(2, 64, 4, 2048, 512, dropout=0.0),
}


def model_config(preset: str, **overrides) -> ModelConfig:
    """``PRESETS[preset]`` with ``overrides`` applied and validated.

    Derived fields follow their sources: a preset whose head_dim is hidden_size // num_heads (or whose
    num_kv_heads equals num_heads) re-derives it when those are overridden without it.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    base = PRESETS[preset]
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown ModelConfig field(s) {unknown} in overrides of preset {preset!r}; "
                         f"valid fields are {sorted(names)}")
    derived = {}
    if base.head_dim == base.hidden_size // base.num_heads and {"hidden_size", "num_heads"} & set(overrides):
        derived["head_dim"] = None
    if base.num_kv_heads == base.num_heads and "num_heads" in overrides:
        derived["num_kv_heads"] = None
    cfg = dataclasses.replace(base, **{**derived, **overrides})
    cfg.validate()
    return cfg


def build_model(preset: str, **overrides) -> GLMModel:
    return GLMModel(model_config(preset, **overrides))


@dataclasses.dataclass
class ModelSection:
    """The ``model`` section: an optional ``preset`` (pretrain.model.PRESETS) plus ModelConfig fields
    overriding it. Without ``vocab_size`` the model takes the tokenizer's vocabulary (added special
    tokens included) rounded up to ``vocab_multiple``."""
    preset: str | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    # the tokenizer's vocabulary is padded to a multiple of this (TP shards and matmul tiles divide it)
    vocab_multiple: int = 128

    @classmethod
    def from_section(cls, data: Mapping[str, Any] | None, where: str) -> "ModelSection":
        data = dict(data or {})
        preset = data.pop("preset", None)
        if preset is not None and not isinstance(preset, str):
            raise ConfigError(f"{where}.preset: expected a preset name, got {preset!r}")
        multiple = data.pop("vocab_multiple", cls.vocab_multiple)
        if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
            raise ConfigError(f"{where}.vocab_multiple={multiple!r} must be a positive integer (1: no padding)")
        section = cls(preset, data, multiple)
        section.resolve(vocab_size=64, where=where)  # validate now, standing in for the tokenizer's vocab
        return section

    def to_dict(self) -> dict[str, Any]:
        """The section as written in a config file."""
        padding = {} if self.vocab_multiple == ModelSection.vocab_multiple else {"vocab_multiple": self.vocab_multiple}
        return {**({"preset": self.preset} if self.preset else {}), **self.fields, **padding}

    def resolve(self, vocab_size: int, where: str = "model") -> ModelConfig:
        """The ModelConfig; the tokenizer's ``vocab_size``, padded to ``vocab_multiple``, applies when the
        section leaves it unset, also over a preset's (which belongs to the preset's original tokenizer)."""
        padded = math.ceil(vocab_size / self.vocab_multiple) * self.vocab_multiple
        fields = {"vocab_size": padded, **self.fields}
        if self.preset is None:
            return from_dict(ModelConfig, fields, where)
        fields = coerce_fields(ModelConfig, fields, where)  # the same type and finiteness checks as from_dict
        try:
            return model_config(self.preset, **fields)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{where}: {err}") from err
