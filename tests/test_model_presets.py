"""Presets: original tensor shapes and published parameter counts, built on meta; FLOP accounting."""
import pytest
import torch
from torch import nn

from pretrain.model import PRESETS, batch_flops, build_model, flops_per_token, matmul_params, model_config

# Published sizes (reference-glm-objective.md §5; model cards). GLM-1, GLM-130B and ChatGLM-6B tie the
# head to the embedding (ChatGLM-6B's lm_head is tied by transformers: its "6.2B" is 6,173,286,400).
PUBLISHED = {"glm-base": 110e6, "glm-large": 335e6, "glm-10b": 9.9e9, "glm-130b": 130e9,
             "chatglm-6b": 6.2e9, "glm-4-9b": 9.4e9}


def meta_model(preset: str, **overrides):
    with torch.device("meta"):
        return build_model(preset, **overrides)


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_parameter_count_matches_published_figure(preset):
    assert meta_model(preset).num_params() == pytest.approx(PUBLISHED[preset], rel=0.015)


def test_chatglm_6b_ties_its_output_layer_to_the_word_embeddings():
    model = meta_model("chatglm-6b")
    assert model.lm_head is None and model.num_params() == 6_173_286_400


def test_glm1_presets_record_the_published_dropout_and_the_smoke_model_has_none():
    for preset in ("glm-base", "glm-large", "glm-10b"):
        assert (PRESETS[preset].dropout, PRESETS[preset].attention_dropout) == (0.1, 0.1), preset
    assert (PRESETS["glm-tiny"].dropout, PRESETS["glm-tiny"].attention_dropout) == (0.0, 0.0)


def test_exact_original_shapes():
    shapes = {n: tuple(p.shape) for n, p in meta_model("glm-10b").named_parameters()}
    assert shapes["position_embeddings.weight"] == (1025, 4096)  # THUDM/GLM#116
    assert shapes["block_position_embeddings.weight"] == (1025, 4096)
    assert shapes["embed_tokens.weight"] == (50304, 4096)
    assert "lm_head.weight" not in shapes
    large = {n: tuple(p.shape) for n, p in meta_model("glm-large").named_parameters()}
    assert sum(v[0] for k, v in large.items() if k.startswith("layers.0.self_attn.") and k.endswith("_proj.weight")
               and "o_proj" not in k) == 3 * 1024  # GLM-1's fused QKV [3H, H]
    glm130b = {n: tuple(p.shape) for n, p in meta_model("glm-130b").named_parameters()}
    assert glm130b["layers.69.mlp.gate_proj.weight"] == glm130b["layers.69.mlp.up_proj.weight"] == (32768, 12288)
    assert glm130b["layers.0.mlp.down_proj.weight"] == (12288, 32768)
    assert glm130b["embed_tokens.weight"] == (150528, 12288)
    chatglm = {n: tuple(p.shape) for n, p in meta_model("chatglm-6b").named_parameters()}
    assert chatglm["embed_tokens.weight"] == (130528, 4096) and chatglm["layers.27.mlp.up_proj.weight"] == (16384, 4096)


def test_glm_4_9b_is_transformers_glm_config_default():
    transformers = pytest.importorskip("transformers")
    from pretrain.model.export import hf_state_dict

    with torch.device("meta"):
        reference = transformers.GlmForCausalLM(transformers.GlmConfig())
    ours = meta_model("glm-4-9b")
    theirs = {n: tuple(p.shape) for n, p in reference.state_dict().items()}
    assert {n: tuple(p.shape) for n, p in hf_state_dict(ours).items()} == theirs
    assert ours.num_params() == sum(p.numel() for p in reference.parameters())


def test_glm_tiny_divides_for_tensor_parallel_two():
    cfg = PRESETS["glm-tiny"]
    assert cfg.vocab_size == 2048  # the embedded corpus tokenizer's vocabulary
    for name in ("num_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size", "hidden_size"):
        assert getattr(cfg, name) % 2 == 0, name
    assert build_model("glm-tiny").num_params() < 500_000  # keeps the 2-process CPU smoke run at a minute


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_matmul_params_counts_the_linear_weights(preset):
    model = meta_model(preset)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    head = model.embed_tokens.weight.numel() if model.cfg.tie_embeddings else 0
    assert matmul_params(model.cfg) == linear + head


def test_flops_per_token_golden():
    cfg = model_config("glm-tiny")  # 2 layers, H=64, 4 heads of 16, FFN 256, vocab 2048, GeLU
    n = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 2048 * 64
    assert flops_per_token(cfg, seq_len=512) == 6 * n + 12 * 2 * 4 * 16 * 512  # PaLM: all pairs
    assert flops_per_token(cfg, 512, attended_pairs_per_token=100.5) == 6 * n + 12 * 2 * 4 * 16 * 100.5
    assert batch_flops(cfg, tokens=10, pairs=300) == 6 * n * 10 + 12 * 2 * 4 * 16 * 300  # a batch's real pairs
