"""Export a GLM-4-shaped model as a Hugging Face ``GlmForCausalLM`` checkpoint (config.json + safetensors).

transformers is not imported here (it is a test-only dependency): the config is written by hand with
the fields of transformers' ``GlmConfig``, and the weights are renamed to its module names.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from pretrain.model.glm import GLMModel
from pretrain.tokens import SpecialTokens

# GlmForCausalLM computes exactly this architecture; anything else would load but compute differently.
_GLM4_ARCHITECTURE = dict(position_encoding="rope_1d", rope_interleaved=True, norm="rmsnorm",
                          norm_placement="pre", mlp="swiglu", bias=False)


def hf_config(model: GLMModel, special: SpecialTokens) -> dict:
    cfg = model.cfg
    mismatched = {k: getattr(cfg, k) for k, v in _GLM4_ARCHITECTURE.items() if getattr(cfg, k) != v}
    if mismatched:
        raise ValueError(f"export_hf writes transformers' GlmForCausalLM, which needs {_GLM4_ARCHITECTURE}; "
                         f"this model has {mismatched} (use a glm-4-9b-based config)")
    return {
        "architectures": ["GlmForCausalLM"],
        "model_type": "glm",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.qkv_bias,
        "attention_dropout": 0.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta,
                            "partial_rotary_factor": cfg.partial_rotary_factor},
        "partial_rotary_factor": cfg.partial_rotary_factor,
        "rope_theta": cfg.rope_theta,
        # generation: a Part-B block ends in eop; GLM-4 style prompts end in [gMASK] <sop>
        "pad_token_id": special.pad,
        "eos_token_id": [special.eos, special.eop],
        "bos_token_id": special.sop,
        "torch_dtype": str(model.embed_tokens.weight.dtype).removeprefix("torch."),
    }


def hf_state_dict(model: GLMModel) -> dict[str, torch.Tensor]:
    """Our parameters under GlmForCausalLM's names; gate_up_proj is [gate_proj; up_proj] stacked."""
    ours = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    theirs = {}
    for name, tensor in ours.items():
        if name.endswith("mlp.gate_proj.weight"):
            prefix = name.removesuffix("gate_proj.weight")
            theirs[f"model.{prefix}gate_up_proj.weight"] = torch.cat([tensor, ours[prefix + "up_proj.weight"]])
        elif name.endswith("mlp.up_proj.weight"):
            continue
        elif name.startswith("lm_head."):
            theirs[name] = tensor
        else:
            theirs[f"model.{name}"] = tensor
    return theirs


def export_hf(model: GLMModel, directory: str | Path, special: SpecialTokens) -> Path:
    """Write ``config.json`` and ``model.safetensors`` loadable by ``GlmForCausalLM.from_pretrained``."""
    directory = Path(directory)
    config = hf_config(model, special.validate(model.cfg.vocab_size))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    weights = {name: tensor.contiguous().cpu() for name, tensor in hf_state_dict(model).items()}
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
