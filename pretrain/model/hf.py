"""Published checkpoints <-> our GLMModel: the name and config mappings, both ways for GLM-4.

    GLM-4  transformers' GlmForCausalLM (config.json + safetensors): in and out (export.py writes files)
    GLM-1  THUDM's GLMModel state dict (glm-large / glm-10b, as on the hub; "glm." prefix optional): in

transformers is not imported here (it is a test-only dependency): config.json is read and written as
JSON with the fields of its ``GlmConfig``, the weights with safetensors (torch.load, weights only, for
pytorch_model.bin). Weights come in as float32, our master-weight dtype.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pretrain.model.config import ModelConfig
from pretrain.model.glm import GLMModel
from pretrain.model.presets import PRESETS, model_config
from pretrain.tokens import SpecialTokens

# GlmForCausalLM computes exactly this architecture; anything else would load but compute differently.
GLM4_ARCHITECTURE = dict(position_encoding="rope_1d", rope_interleaved=True, norm="rmsnorm", norm_placement="pre",
                         mlp="swiglu", bias=False)
GLM1_PRESETS = ("glm-base", "glm-large", "glm-10b")


@dataclass
class Imported:
    """A checkpoint as ours: the preset it matches, the fields that differ, our state dict."""
    layout: str  # "glm4" or "glm1"
    preset: str
    fields: dict
    state_dict: dict[str, torch.Tensor]

    @property
    def config(self) -> ModelConfig:
        return model_config(self.preset, **self.fields)

    def model(self) -> GLMModel:
        """Our model holding these weights (eval mode); a missing, extra or misshapen tensor is named."""
        with torch.device("meta"):
            model = GLMModel(self.config)
        check_state_dict(model, self.state_dict, f"the {self.layout} checkpoint")
        model.load_state_dict(self.state_dict, assign=True)
        return model.eval()


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise ValueError naming the first tensor of ``state`` that does not fit ``model`` by name or shape."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or extra:
        raise ValueError(f"{source} does not fit the model: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ValueError(f"{source}: {name} has shape {tuple(state[name].shape)}, the model's is {shape}")


def read_checkpoint(directory: str | Path, weights: bool = True) -> Imported:
    """A transformers-style directory (config.json + weights) of a GLM-4 or GLM-1 model, as ours;
    ``weights=False`` reads only what the config needs (an empty state_dict)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{directory} has no config.json; give a transformers checkpoint directory")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    try:
        return _read(directory, config, weights)
    except KeyError as err:
        raise ValueError(f"{directory}: {err.args[0]!r} is missing (a config.json field or a tensor); is it a "
                         f"complete checkpoint?") from None


def _read(directory: Path, config: dict, weights: bool) -> Imported:
    architectures = config.get("architectures") or []
    if "GlmForCausalLM" in architectures:
        fields = glm4_fields(config)
        state = from_glm4_state_dict(read_weights(directory), fields) if weights else {}
        return match_preset("glm4", ("glm-4-9b",), fields, state, always=("num_kv_heads", "head_dim"))
    if "block_position_encoding" in config:  # THUDM's GLMConfig (GLMModel, GLMForConditionalGeneration, ...)
        raw = read_weights(directory) if weights else None  # read once: a .bin has no shapes without its data
        shapes = {k: tuple(v.shape) for k, v in raw.items()} if weights else read_shapes(directory)
        fields = glm1_fields(config, shapes)
        state = from_glm1_state_dict(raw, fields["num_layers"]) if weights else {}
        return match_preset("glm1", GLM1_PRESETS, fields, state)
    raise ValueError(f"{directory / 'config.json'}: architectures {architectures} is neither transformers' "
                     f"GlmForCausalLM (GLM-4) nor THUDM's GLM-1 (a config with block_position_encoding); nothing else is imported")


def _weight_files(directory: Path) -> list[Path]:
    """model.safetensors or pytorch_model.bin, or the shards their ``.index.json`` lists."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        index = directory / f"{name}.index.json"
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [name]
        if all((directory / f).is_file() for f in files):
            return [directory / f for f in files]
    raise ValueError(f"{directory} holds no model.safetensors or pytorch_model.bin (nor their .index.json shards)")


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for file in _weight_files(directory):
        weights.update(load_file(file) if file.name.endswith(".safetensors")
                       else torch.load(file, map_location="cpu", weights_only=True))
    return weights


def read_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes without reading safetensors data (a .bin file must be read)."""
    shapes = {}
    for file in _weight_files(directory):
        if file.name.endswith(".safetensors"):
            with safe_open(file, "pt") as handle:
                shapes.update({name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()})
        else:
            shapes.update({name: tuple(t.shape) for name, t in torch.load(file, map_location="cpu",
                                                                          weights_only=True).items()})
    return shapes


def match_preset(layout: str, presets: tuple[str, ...], fields: dict, state: dict, always: tuple = ()) -> Imported:
    """The preset with the fewest differing fields. vocab_size and the ``always`` fields are kept even when
    equal: a model section without vocab_size takes the tokenizer's, and a preset re-derives head_dim and
    num_kv_heads when their sources are overridden."""
    def differing(preset):
        base = PRESETS[preset]
        return {k: v for k, v in fields.items() if k in ("vocab_size", *always) or getattr(base, k) != v}
    preset = min(presets, key=lambda p: len(differing(p)))
    return Imported(layout, preset, differing(preset), {k: v.float().contiguous() for k, v in state.items()})


# --------------------------------------------------------------------------------------------- GLM-4
def glm4_fields(config: dict) -> dict:
    """ModelConfig fields of a GlmConfig (transformers 4.x puts the rope fields at the top level, 5.x in
    rope_parameters)."""
    rope = {**{k: config[k] for k in ("rope_theta", "partial_rotary_factor") if k in config},
            **(config.get("rope_parameters") or {})}
    scaling = config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default" or config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: rope_type={rope_type!r}, hidden_act={config.get('hidden_act')!r}; only "
                         f"GLM-4's default RoPE and SiLU are imported")
    return dict(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"], num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        num_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        head_dim=config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"],
        ffn_hidden_size=config["intermediate_size"],
        max_position_embeddings=config["max_position_embeddings"],
        partial_rotary_factor=rope.get("partial_rotary_factor", 0.5), rope_theta=rope.get("rope_theta", 10000.0),
        norm_eps=config.get("rms_norm_eps", 1e-5), tie_embeddings=config.get("tie_word_embeddings", False),
        qkv_bias=config.get("attention_bias", True), attention_dropout=config.get("attention_dropout", 0.0),
        init_std=config.get("initializer_range", 0.02), **GLM4_ARCHITECTURE)


def glm4_config(cfg: ModelConfig, special: SpecialTokens, dtype: torch.dtype) -> dict:
    """config.json of a GlmForCausalLM computing ``cfg`` (the inverse of ``glm4_fields``)."""
    mismatched = {k: getattr(cfg, k) for k, v in GLM4_ARCHITECTURE.items() if getattr(cfg, k) != v}
    if mismatched:
        raise ValueError(f"export_hf writes transformers' GlmForCausalLM, which needs {GLM4_ARCHITECTURE}; "
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
        "attention_dropout": cfg.attention_dropout,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta,
                            "partial_rotary_factor": cfg.partial_rotary_factor},
        "partial_rotary_factor": cfg.partial_rotary_factor,  # where transformers 4.x reads them
        "rope_theta": cfg.rope_theta,
        # generation: a Part-B block ends in eop; GLM-4 style prompts end in [gMASK] <sop>
        "pad_token_id": special.pad,
        "eos_token_id": [special.eos, special.eop],
        "bos_token_id": special.sop,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def to_glm4_state_dict(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our parameters under GlmForCausalLM's names; gate_up_proj is [gate_proj; up_proj] stacked."""
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


def from_glm4_state_dict(theirs: dict[str, torch.Tensor], fields: dict) -> dict[str, torch.Tensor]:
    """The inverse of ``to_glm4_state_dict``; a tied model's stored lm_head (a copy of the embedding) is dropped."""
    ours = {}
    for name, tensor in theirs.items():
        if name.endswith("mlp.gate_up_proj.weight"):
            prefix = name.removeprefix("model.").removesuffix("gate_up_proj.weight")
            ours[prefix + "gate_proj.weight"], ours[prefix + "up_proj.weight"] = tensor.chunk(2)
        elif name.startswith("lm_head."):
            if not fields["tie_embeddings"]:
                ours[name] = tensor
        elif name.startswith("model."):
            ours[name.removeprefix("model.")] = tensor
        else:
            raise ValueError(f"GlmForCausalLM checkpoint holds an unexpected tensor {name!r}")
    return ours


# --------------------------------------------------------------------------------------------- GLM-1
# THUDM's GLMModel name (after an optional "glm." prefix) -> ours; {i} is the layer index.
_GLM1_NAMES = {
    "word_embeddings.weight": "embed_tokens.weight",
    "transformer.position_embeddings.weight": "position_embeddings.weight",
    "transformer.block_position_embeddings.weight": "block_position_embeddings.weight",
    "transformer.final_layernorm.{p}": "norm.{p}",
    "transformer.layers.{i}.input_layernorm.{p}": "layers.{i}.input_layernorm.{p}",
    "transformer.layers.{i}.attention.dense.{p}": "layers.{i}.self_attn.o_proj.{p}",
    "transformer.layers.{i}.post_attention_layernorm.{p}": "layers.{i}.post_attention_layernorm.{p}",
    "transformer.layers.{i}.mlp.dense_h_to_4h.{p}": "layers.{i}.mlp.up_proj.{p}",
    "transformer.layers.{i}.mlp.dense_4h_to_h.{p}": "layers.{i}.mlp.down_proj.{p}",
}
_QKV = "transformer.layers.{i}.attention.query_key_value.{p}"  # [3H, H]: q, k, v stacked by output rows


def _strip_prefix(weights: dict) -> dict:
    """GLMForConditionalGeneration and friends hold the GLMModel under ``glm.``."""
    if weights and all(name.startswith("glm.") for name in weights):
        return {name.removeprefix("glm."): tensor for name, tensor in weights.items()}
    return weights


def glm1_fields(config: dict, shapes: dict[str, tuple[int, ...]]) -> dict:
    """ModelConfig fields of THUDM's GLMConfig; the position tables have max_sequence_length + 1 rows."""
    unsupported = {k: config.get(k) for k, ok in (("block_position_encoding", True), ("relative_encoding", False),
                                                  ("attention_scale", 1.0), ("spell_length", None))
                   if config.get(k, ok) != ok}
    if unsupported:
        raise ValueError(f"config.json: {unsupported}; only GLM-1 with learned 2-D positions, no relative "
                         f"encoding, attention_scale 1 and no prompt spell is imported")
    if config.get("embedding_dropout_prob", 0.1) != config.get("output_dropout_prob", 0.1):
        raise ValueError(f"config.json: embedding_dropout_prob={config['embedding_dropout_prob']} differs from "
                         f"output_dropout_prob={config['output_dropout_prob']}; our model has one hidden dropout")
    shapes = _strip_prefix(shapes)
    return dict(vocab_size=config["vocab_size"], hidden_size=config["hidden_size"], num_layers=config["num_layers"],
                num_heads=config["num_attention_heads"],
                ffn_hidden_size=shapes["transformer.layers.0.mlp.dense_h_to_4h.weight"][0],
                max_position_embeddings=shapes["transformer.position_embeddings.weight"][0] - 1,
                dropout=config.get("output_dropout_prob", 0.1),
                attention_dropout=config.get("attention_dropout_prob", 0.1),
                init_std=config.get("initializer_range", 0.02))


def from_glm1_state_dict(weights: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    weights = dict(_strip_prefix(weights))
    ours = {}
    for pattern, target in {**_GLM1_NAMES, _QKV: None}.items():
        for i in range(num_layers) if "{i}" in pattern else [None]:
            for p in ("weight", "bias") if "{p}" in pattern else [None]:
                name = pattern.format(i=i, p=p)
                if name not in weights:
                    raise ValueError(f"GLM-1 checkpoint has no tensor {name!r}; is it THUDM's GLMModel layout?")
                tensor = weights.pop(name)
                if target is not None:
                    ours[target.format(i=i, p=p)] = tensor
                    continue
                for proj, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3)):
                    ours[f"layers.{i}.self_attn.{proj}.{p}"] = part
    if weights:
        raise ValueError(f"GLM-1 checkpoint holds tensors our model has no place for: {sorted(weights)[:5]}")
    return ours
