"""Tiny published-style assets built offline for the import/export/init_from tests: a BPE tokenizer saved
as a transformers tokenizer directory (GLM-4-like: its specials after the regular vocabulary), a random
GlmForCausalLM checkpoint, a GLM-1 (THUDM GLMModel layout) checkpoint, and the causal view of a batch."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from pretrain.data.corpus import embedded_documents

# GLM-4's tokenizer.json names these (its ids are 151329+); no pad, cls: our resolution appends them
GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|user|>"]
GLM4_TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=24, max_position_embeddings=256)


def corpus_lines(limit: int = 400) -> list[str]:
    return [line for lines in embedded_documents().values() for line in lines][:limit]


def train_bpe(vocab_size: int = 400, specials: list[str] = GLM4_SPECIALS) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in specials])
    return tokenizer


def save_hf_tokenizer(tokenizer: Tokenizer, directory: Path) -> Path:
    from transformers import PreTrainedTokenizerFast
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                            mask_token="[MASK]").save_pretrained(directory)
    return directory


def save_hf_glm4(directory: Path, vocab_size: int, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random GlmForCausalLM (norms and biases perturbed so that every tensor's mapping matters)."""
    import transformers
    torch.manual_seed(seed)
    config = transformers.GlmConfig(vocab_size=vocab_size, pad_token_id=0, eos_token_id=1,
                                    **{**GLM4_TINY, **overrides})
    model = transformers.GlmForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(directory)
    return model


def glm1_state_dict(vocab: int, hidden: int, layers: int, max_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random THUDM GLMModel state dict (GLMForConditionalGeneration's "glm." prefix)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen) * 0.1
    state = {"word_embeddings.weight": rand(vocab, hidden),
             "transformer.position_embeddings.weight": rand(max_len + 1, hidden),
             "transformer.block_position_embeddings.weight": rand(max_len + 1, hidden),
             "transformer.final_layernorm.weight": 1 + rand(hidden), "transformer.final_layernorm.bias": rand(hidden)}
    for i in range(layers):
        layer = f"transformer.layers.{i}."
        for name, rows, cols in (("attention.query_key_value", 3 * hidden, hidden), ("attention.dense", hidden, hidden),
                                 ("mlp.dense_h_to_4h", 4 * hidden, hidden), ("mlp.dense_4h_to_h", hidden, 4 * hidden)):
            state[f"{layer}{name}.weight"], state[f"{layer}{name}.bias"] = rand(rows, cols), rand(rows)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[f"{layer}{norm}.weight"], state[f"{layer}{norm}.bias"] = 1 + rand(hidden), rand(hidden)
    return {f"glm.{name}": tensor for name, tensor in state.items()}


def save_glm1(directory: Path, vocab: int = 300, hidden: int = 64, heads: int = 4, layers: int = 2,
              max_len: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """THUDM/glm-large's hub layout: GLMConfig's config.json + pytorch_model.bin."""
    directory.mkdir(parents=True, exist_ok=True)
    state = glm1_state_dict(vocab, hidden, layers, max_len, seed)
    config = {"architectures": ["GLMModel"], "model_type": "glm", "num_layers": layers, "vocab_size": vocab,
              "hidden_size": hidden, "num_attention_heads": heads, "embedding_dropout_prob": 0.1,
              "attention_dropout_prob": 0.1, "output_dropout_prob": 0.1, "max_sequence_length": max_len,
              "block_position_encoding": True, "relative_encoding": False, "attention_scale": 1.0,
              "spell_length": None, "initializer_range": 0.02}
    (directory / "config.json").write_text(json.dumps(config))
    torch.save(state, directory / "pytorch_model.bin")
    return state


def causal_inputs(input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our model's inputs for a plain causal pass (what transformers computes)."""
    batch, seq_len = input_ids.shape
    return dict(input_ids=input_ids, position_ids=torch.arange(seq_len).expand(batch, -1),
                block_position_ids=torch.zeros(batch, seq_len, dtype=torch.long),
                segment_ids=torch.zeros(batch, seq_len, dtype=torch.long),
                part_a=torch.zeros(batch, seq_len, dtype=torch.bool))
