"""ModelConfig: one typed description of every GLM-family architecture (the presets are instances)."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal

PositionEncoding = Literal["learned_2d", "rope_2d", "rope_1d"]
Norm = Literal["layernorm", "rmsnorm"]
NormPlacement = Literal["pre", "deepnorm"]
MLPKind = Literal["gelu", "geglu", "swiglu"]
AttentionBackend = Literal["auto", "flex", "sdpa", "dense"]


@dataclass
class ModelConfig:
    vocab_size: int  # embedding rows (the run takes the tokenizer's, padded to 128, unless set)
    hidden_size: int  # width of the residual stream
    num_layers: int  # transformer blocks
    num_heads: int  # query heads
    ffn_hidden_size: int  # MLP inner width (of each branch for GLU variants)
    max_position_embeddings: int  # rows of the learned 2-D tables; the longest sequence the model is meant for
    num_kv_heads: int | None = None  # None: multi-head attention (= num_heads)
    head_dim: int | None = None  # None: hidden_size // num_heads
    # learned_2d: GLM-1 tables of max_position_embeddings + 1 rows (as the original block-LM code);
    # rope_2d: ChatGLM-6B, half of each head rotated by position, half by block position;
    # rope_1d: GLM-130B / GLM-4, the first partial_rotary_factor of each head rotated by position.
    position_encoding: PositionEncoding = "learned_2d"
    partial_rotary_factor: float = 1.0  # rope_1d: fraction of each head's dims rotated (GLM-4: 0.5)
    rope_theta: float = 10000.0  # RoPE base of the rotation frequencies
    rope_interleaved: bool = False  # GLM-4 rotates (even, odd) pairs; GLM-130B/ChatGLM rotate halves
    norm: Norm = "layernorm"  # LayerNorm (GLM-1, GLM-130B) or RMSNorm (GLM-4)
    norm_eps: float = 1e-5  # epsilon of every norm
    norm_placement: NormPlacement = "pre"  # deepnorm: x = LN(x)·α + F(LN(x)), α = √(2·num_layers)
    mlp: MLPKind = "gelu"  # gelu: GLM-1; geglu: GLM-130B; swiglu: GLM-4
    qkv_bias: bool = True  # biases on the q/k/v projections
    bias: bool = True  # o_proj and MLP linears
    tie_embeddings: bool = True  # logits use embed_tokens.weight (no separate lm_head)
    embedding_grad_shrink: float = 1.0  # GLM-130B's α: emb·α + emb.detach()·(1−α); 1.0 = off
    dropout: float = 0.0  # embeddings and both residual branches
    attention_dropout: float = 0.0  # attention probabilities (sdpa and dense backends; flex has none)
    init_std: float = 0.02  # σ of the normal init (embeddings, linears; residual outputs σ/√(2·layers))
    attention_backend: AttentionBackend = "auto"  # auto: flex on GPU, sdpa elsewhere; dense: the test reference

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        divisible = isinstance(self.num_heads, int) and self.num_heads > 0 and self.hidden_size % self.num_heads == 0
        if self.head_dim is None and divisible:  # otherwise validate() asks for an explicit head_dim
            self.head_dim = self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        """Dims of each head that RoPE rotates (0 for learned positions)."""
        if self.position_encoding == "learned_2d":
            return 0
        if self.position_encoding == "rope_2d":
            return self.head_dim
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def deepnorm_alpha(self) -> float:
        return (2 * self.num_layers) ** 0.5

    def validate(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if typing.get_origin(hints[field.name]) is Literal and value not in typing.get_args(hints[field.name]):
                raise ValueError(f"{field.name}={value!r} is not one of {list(typing.get_args(hints[field.name]))}")
        if self.head_dim is None:
            raise ValueError(f"head_dim is unset and hidden_size={self.hidden_size} is not divisible by "
                             f"num_heads={self.num_heads}; set head_dim or change one of them")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "ffn_hidden_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise ValueError(f"partial_rotary_factor={self.partial_rotary_factor} must be in (0, 1]")
        if self.position_encoding == "rope_2d" and (self.partial_rotary_factor != 1.0 or self.head_dim % 4):
            raise ValueError(f"rope_2d rotates two halves of each head: needs partial_rotary_factor=1.0 (got "
                             f"{self.partial_rotary_factor}) and head_dim divisible by 4 (got {self.head_dim})")
        if self.position_encoding == "rope_1d" and (self.rotary_dim < 2 or self.rotary_dim % 2):
            raise ValueError(f"rope_1d rotates int(head_dim × partial_rotary_factor) = {self.rotary_dim} dims; "
                             f"that must be a positive even number (head_dim={self.head_dim}, "
                             f"partial_rotary_factor={self.partial_rotary_factor})")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta={self.rope_theta} must be positive")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps={self.norm_eps} must be positive")
        if not 0.0 < self.embedding_grad_shrink <= 1.0:
            raise ValueError(f"embedding_grad_shrink={self.embedding_grad_shrink} must be in (0, 1]; 1.0 turns it off")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.attention_backend == "flex" and self.attention_dropout:
            raise ValueError(f"attention_dropout={self.attention_dropout} needs attention_backend sdpa, dense or auto: "
                             f"FlexAttention has no attention-probability dropout")
        if self.init_std <= 0:
            raise ValueError(f"init_std={self.init_std} must be positive")
