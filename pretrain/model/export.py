"""Export a GLM-4-shaped model as a transformers directory that loads with no extra step:

    config.json, model.safetensors       GlmForCausalLM (names and config: hf.py)
    generation_config.json               eos = [eos, eop]: generation stops at a document or a block end
    tokenizer.json, tokenizer_config.json   the run's tokenizer, its GLM special tokens by role
    README.md                            a model card stub

``AutoTokenizer.from_pretrained(dir)`` and ``AutoModelForCausalLM.from_pretrained(dir)`` read it as is.
transformers is not imported: the files are written by hand with the fields its loaders read.
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from tokenizers import Tokenizer

from pretrain.model.glm import GLMModel
from pretrain.model.hf import glm4_config, to_glm4_state_dict
from pretrain.tokens import SpecialTokens

# transformers' named special-token attributes; every other role is an additional special token
_NAMED_ROLES = {"pad": "pad_token", "eos": "eos_token", "cls": "cls_token", "mask": "mask_token"}


def hf_config(model: GLMModel, special: SpecialTokens) -> dict:
    """config.json of the GlmForCausalLM that computes ``model`` (refuses other architectures)."""
    return glm4_config(model.cfg, special, model.embed_tokens.weight.dtype)


def hf_state_dict(model: GLMModel) -> dict:
    """The model's parameters under GlmForCausalLM's names."""
    return to_glm4_state_dict({name: tensor.detach() for name, tensor in model.state_dict().items()})


def tokenizer_config(tokenizer: Tokenizer, special: SpecialTokens, max_length: int) -> dict:
    """tokenizer_config.json for the fast tokenizer in tokenizer.json, special tokens by role."""
    text = {role: tokenizer.id_to_token(token_id) for role, token_id in special.roles().items()}
    missing = sorted(role for role, token in text.items() if token is None)
    if missing:
        raise ValueError(f"the run's tokenizer has no token for special role(s) {missing}; it is not the tokenizer "
                         f"these special ids were resolved in")
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
            "clean_up_tokenization_spaces": False,
            **{key: text[role] for role, key in _NAMED_ROLES.items()},
            "additional_special_tokens": [token for role, token in text.items() if role not in _NAMED_ROLES]}


def model_card(model: GLMModel, special: SpecialTokens, source: str) -> str:
    cfg = model.cfg
    roles = ", ".join(f"{role} {token_id}" for role, token_id in special.roles().items())
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [glm, glm-pretrain]
---
# GLM model exported by glm-pretrain

Exported from `{source}`. Architecture: transformers' `GlmForCausalLM` (GLM-4 layout), {cfg.num_layers} layers,
hidden {cfg.hidden_size}, {cfg.num_heads} heads ({cfg.num_kv_heads} KV), vocabulary {cfg.vocab_size},
{model.num_params():,} parameters.

Trained with GLM's autoregressive blank infilling. Special token ids: {roles}. As a causal model it
continues text; a blank is filled from `[gMASK]`/`[MASK]` + `<sop>`, and a block ends with `<eop>`
(both `eos` and `eop` stop generation, see generation_config.json).

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("PATH")
model = AutoModelForCausalLM.from_pretrained("PATH")
```
"""


def export_hf(model: GLMModel, directory: str | Path, special: SpecialTokens, tokenizer: Tokenizer | None = None,
              source: str = "a glm-pretrain run") -> Path:
    """Write the transformers directory (see the module docstring); without ``tokenizer`` no tokenizer files."""
    directory = Path(directory)
    special.validate(model.cfg.vocab_size)
    files = {"config.json": hf_config(model, special),  # refuses other architectures before any write
             "generation_config.json": {"bos_token_id": special.sop, "eos_token_id": [special.eos, special.eop],
                                        "pad_token_id": special.pad}}
    if tokenizer is not None:
        files["tokenizer_config.json"] = tokenizer_config(tokenizer, special, model.cfg.max_position_embeddings)
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None:
        (directory / "tokenizer.json").write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
    (directory / "README.md").write_text(model_card(model, special, source), encoding="utf-8")
    weights = {name: tensor.contiguous().cpu() for name, tensor in hf_state_dict(model).items()}
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
