"""GLMModel: one decoder definition for GLM-1, GLM-130B, ChatGLM-6B and GLM-4 (the differences are config).

    h = embed_tokens(ids) [+ position_embeddings(pos) + block_position_embeddings(block)]   (learned_2d)
    h = h·α + h.detach()·(1−α)                                                              (grad shrink)
    pre-LN:   h = h + Attn(LN1(h));              h = h + MLP(LN2(h))
    deepnorm: x = LN1(h); h = x·α + Attn(x);     x = LN2(h); h = x·α + MLP(x)     (α = √(2·layers))
    logits = norm(h) @ (lm_head | embed_tokens).T   in float32   (or output_head(norm(h), head weight))

No parallelism here: the engines in pretrain/parallel shard q/k/v colwise and o rowwise from outside,
so attention takes its local head count from tensor shapes. For pipeline parallelism the model is
stage-splittable from outside (torchtitan's approach): ``layers`` is a ModuleDict keyed by the global
layer index; forward embeds integer ids and passes floating-point input (a previous stage's hidden
states [B, S, H]) straight to its layers, so a stage may drop ``embed_tokens`` (or keep it only for a
tied head) and ``norm`` (it then returns hidden states). ``build_attention`` is an attribute so that
parallel code (context parallelism) can swap in its own attention for the same mask rule.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.model.attention import build_attention
from pretrain.model.config import ModelConfig
from pretrain.model.positions import apply_rotary, rotary_cos_sin

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # attention.build_attention's result
Rotary = tuple[torch.Tensor, torch.Tensor] | None  # (cos, sin) from positions.rotary_cos_sin; None: learned


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.bias)

    def forward(self, x: torch.Tensor, attend: Attend, rotary: Rotary) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        head_dim = self.cfg.head_dim
        q = self.q_proj(x).view(batch, seq_len, -1, head_dim)  # [B, S, Hq_local, D]
        k = self.k_proj(x).view(batch, seq_len, -1, head_dim)  # [B, S, Hkv_local, D]
        v = self.v_proj(x).view(batch, seq_len, -1, head_dim)
        if rotary is not None:
            q = apply_rotary(q, *rotary, interleaved=self.cfg.rope_interleaved)
            k = apply_rotary(k, *rotary, interleaved=self.cfg.rope_interleaved)
        out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [B, Hq_local, S, D]
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq_len, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        if cfg.mlp != "gelu":
            self.gate_proj = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gelu":
            hidden = F.gelu(self.up_proj(x), approximate="tanh")  # GLM's OpenAI-style tanh GeLU
        elif self.kind == "geglu":
            hidden = F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x)
        else:
            hidden = F.silu(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(hidden)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.deepnorm_alpha = cfg.deepnorm_alpha if cfg.norm_placement == "deepnorm" else None
        self.input_layernorm = make_norm(cfg)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, h: torch.Tensor, attend: Attend, rotary: Rotary) -> torch.Tensor:
        if self.deepnorm_alpha is None:
            h = h + self.dropout(self.self_attn(self.input_layernorm(h), attend, rotary))
            return h + self.dropout(self.mlp(self.post_attention_layernorm(h)))
        x = self.input_layernorm(h)
        h = x * self.deepnorm_alpha + self.dropout(self.self_attn(x, attend, rotary))
        x = self.post_attention_layernorm(h)
        return x * self.deepnorm_alpha + self.dropout(self.mlp(x))


class GLMModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        if cfg.position_encoding == "learned_2d":
            # +1 row as in GLM-1's block-LM tables (a [1025, 4096] table for max length 1024)
            self.position_embeddings = nn.Embedding(cfg.max_position_embeddings + 1, cfg.hidden_size)
            self.block_position_embeddings = nn.Embedding(cfg.max_position_embeddings + 1, cfg.hidden_size)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.num_layers)})
        self.norm = make_norm(cfg)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.build_attention = build_attention
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Deterministic from torch's global RNG (module order). Callable again after ``to_empty``.

        pre-LN (GLM-1/GLM-4): N(0, σ), the residual outputs o_proj/down_proj N(0, σ/√(2·layers)).
        deepnorm (GLM-130B/ChatGLM-6B): Xavier-normal, gain β = (2·layers)^-½ on v_proj, o_proj and the
        MLP, gain 1 on q/k. Embeddings N(0, σ), biases 0, norms 1.
        """
        cfg = self.cfg
        residual_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
        beta = (2 * cfg.num_layers) ** -0.5
        for name, module in self.named_modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=cfg.init_std)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()
            elif isinstance(module, nn.Linear):
                leaf = name.rsplit(".", 1)[-1]
                if cfg.norm_placement == "deepnorm" and leaf != "lm_head":
                    gain = 1.0 if leaf in ("q_proj", "k_proj") else beta
                    nn.init.xavier_normal_(module.weight, gain=gain)
                else:
                    std = residual_std if leaf in ("o_proj", "down_proj") else cfg.init_std
                    nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """Parameters, each shared (tied) tensor once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, block_position_ids: torch.Tensor,
                segment_ids: torch.Tensor, part_a: torch.Tensor, output_head: Callable | None = None):
        """All inputs [B, S] (part_a bool); returns float32 logits [B, S, V]. On a later pipeline stage
        ``input_ids`` are the previous stage's hidden states [B, S, H] (with sequence parallelism the local
        [B, S / tp, H]); a stage without the final norm returns hidden states. ``output_head(hidden [B, S, H],
        head weight [V, H])`` replaces the logits matmul when given (the trainer's chunked cross entropy: no
        [B, S, V] logits); it runs inside forward, where engines that shard parameters have the head weight
        gathered."""
        cfg = self.cfg
        inputs = dict(position_ids=position_ids, block_position_ids=block_position_ids, segment_ids=segment_ids,
                      part_a=part_a)
        hidden_input = input_ids.is_floating_point()
        if position_ids.dim() != 2 or any(t.shape != position_ids.shape for t in inputs.values()) or \
                input_ids.shape[:1 if hidden_input else 2] != position_ids.shape[:1 if hidden_input else 2]:
            raise ValueError("GLMModel inputs must all be [B, S]; got "
                             + ", ".join(f"{k} {tuple(t.shape)}" for k, t in {"input_ids": input_ids, **inputs}.items()))
        h = input_ids if hidden_input else self.embed(input_ids, position_ids, block_position_ids)
        rotary = None
        if cfg.position_encoding != "learned_2d":
            rotary = rotary_cos_sin(cfg, position_ids, block_position_ids, h.dtype)
        attend = self.build_attention(self.attention_backend(h.device), segment_ids, part_a,
                                      dropout_p=cfg.attention_dropout if self.training else 0.0)
        for layer in self.layers.values():
            h = layer(h, attend, rotary)
        if self.norm is None:
            return h
        head = self.lm_head.weight if self.lm_head is not None else self.embed_tokens.weight
        if output_head is not None:
            return output_head(self.norm(h), head)
        return F.linear(self.norm(h), head).float()

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor, block_position_ids: torch.Tensor):
        """Token (+ learned 2-D position) embeddings [B, S, H], with GLM-130B's gradient shrink."""
        cfg = self.cfg
        h = self.embed_tokens(input_ids)  # [B, S, H]
        if cfg.position_encoding == "learned_2d":
            h = h + self.position_embeddings(position_ids) + self.block_position_embeddings(block_position_ids)
        if cfg.embedding_grad_shrink != 1.0:
            h = h * cfg.embedding_grad_shrink + h.detach() * (1.0 - cfg.embedding_grad_shrink)
        return self.embed_dropout(h)

    def attention_backend(self, device: torch.device) -> str:
        if self.cfg.attention_backend != "auto":
            return self.cfg.attention_backend
        return "flex" if device.type == "cuda" and not self.cfg.attention_dropout else "sdpa"
