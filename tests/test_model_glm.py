"""GLMModel: backends agree end to end, the mask's black-box semantics, positions, init, options."""
import math

import pytest
import torch

from pretrain.config import ConfigError, from_dict, to_dict
from pretrain.model import GLMModel, ModelConfig, build_model, model_config
from pretrain.model.positions import apply_rotary, rotary_cos_sin

SMALL = dict(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, ffn_hidden_size=96,
             max_position_embeddings=64)
VARIANTS = {  # one per family: every option value appears at least once
    "glm1": dict(),
    "chatglm": dict(position_encoding="rope_2d", norm_placement="deepnorm", tie_embeddings=False),
    "glm130b": dict(position_encoding="rope_1d", norm_placement="deepnorm", mlp="geglu",
                    embedding_grad_shrink=0.1, num_kv_heads=1),
    "glm4": dict(position_encoding="rope_1d", partial_rotary_factor=0.5, rope_interleaved=True, norm="rmsnorm",
                 mlp="swiglu", num_kv_heads=2, bias=False, tie_embeddings=False),
}


def make_model(variant: str, seed: int = 0, **overrides) -> GLMModel:
    torch.manual_seed(seed)
    return build_model("glm-tiny", **{**SMALL, **VARIANTS[variant], **overrides})


def make_batch(layout, seed: int, batch: int = 3, seq_len: int = 48, vocab: int = 128):
    segment_ids, part_a = layout(seed, batch, seq_len)
    gen = torch.Generator().manual_seed(seed)
    return dict(input_ids=torch.randint(0, vocab, (batch, seq_len), generator=gen),
                position_ids=torch.randint(0, 64, (batch, seq_len), generator=gen),
                block_position_ids=torch.randint(0, 64, (batch, seq_len), generator=gen),
                segment_ids=segment_ids, part_a=part_a)


def logits_with(model: GLMModel, backend: str, batch: dict) -> torch.Tensor:
    model.cfg.attention_backend = backend
    return model(**batch)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sdpa_matches_dense_reference_forward_and_backward(glm_random_layout, variant):
    model = make_model(variant)
    for seed in range(2):
        batch = make_batch(glm_random_layout, seed)
        weights = torch.randn(3, 48, 128, generator=torch.Generator().manual_seed(seed))
        results = {}
        for backend in ("sdpa", "dense"):
            model.zero_grad()
            logits = logits_with(model, backend, batch)
            (logits * weights).sum().backward()
            results[backend] = (logits, {n: p.grad.clone() for n, p in model.named_parameters()})
        torch.testing.assert_close(results["sdpa"][0], results["dense"][0], atol=1e-5, rtol=1e-5)
        for name, grad in results["sdpa"][1].items():  # fp32 summation-order noise: atol scales with the tensor
            ref = results["dense"][1][name]
            torch.testing.assert_close(grad, ref, atol=1e-6 * max(ref.abs().max().item(), 1.0), rtol=1e-5,
                                       msg=name)


@torch.no_grad()
def test_flex_model_forward_matches_dense(glm_random_layout):
    model = make_model("glm4")  # q [2, 4, 160, 16], k/v [2, 2, 160, 16]: the shapes of test_model_attention's
    batch = make_batch(glm_random_layout, 5, batch=2, seq_len=160)
    reference = logits_with(model, "dense", batch)
    torch.testing.assert_close(logits_with(model, "flex", batch), reference, atol=1e-5, rtol=1e-5)
    model.layers["0"].compile()  # as train.compile does: Flex inlined into the layer's graph
    torch.testing.assert_close(logits_with(model, "flex", batch), reference, atol=1e-5, rtol=1e-5)


def _edit_token(batch: dict, row: int, position: int) -> dict:
    edited = {k: v.clone() for k, v in batch.items()}
    edited["input_ids"][row, position] = (edited["input_ids"][row, position] + 1) % 128
    edited["position_ids"][row, position] = (edited["position_ids"][row, position] + 3) % 64
    return edited


def _segment_changes(batch, row, position):
    """Positions of `row` whose logits may change when the token at `position` changes."""
    segment_ids, part_a = batch["segment_ids"][row], batch["part_a"][row]
    same = (segment_ids == segment_ids[position]) & (segment_ids >= 0)
    if segment_ids[position] < 0:
        return torch.arange(len(segment_ids)) == position
    if part_a[position]:
        return same
    return same & (torch.arange(len(segment_ids)) >= position)


@pytest.mark.parametrize("backend,variant", [("sdpa", "glm1"), ("sdpa", "glm4"), ("dense", "glm1")])
@torch.no_grad()
def test_a_token_only_influences_what_the_rule_lets_see_it(glm_random_layout, backend, variant):
    """Part-B edits never reach Part A or earlier Part-B tokens; no edit crosses segments; pads reach nobody."""
    model = make_model(variant)
    for seed in (11, 12):
        batch = make_batch(glm_random_layout, seed)
        base = logits_with(model, backend, batch)
        for row in range(3):
            for position in range(seed % 2, 48, 8):
                changed = (logits_with(model, backend, _edit_token(batch, row, position)) - base).abs().amax(-1)
                allowed = _segment_changes(batch, row, position)
                assert (changed[row][~allowed] == 0).all(), (variant, row, position)
                assert (changed[torch.arange(3) != row] == 0).all()
                assert changed[row, position] > 0  # the edit itself is visible: the test can fail


@torch.no_grad()
def test_padding_length_never_changes_real_logits():
    model = make_model("glm4")
    gen = torch.Generator().manual_seed(3)
    real = dict(input_ids=torch.randint(0, 128, (1, 20), generator=gen), position_ids=torch.arange(20)[None],
                block_position_ids=torch.zeros(1, 20, dtype=torch.long), segment_ids=torch.zeros(1, 20, dtype=torch.long),
                part_a=(torch.arange(20) < 12)[None])
    pad_values = dict(input_ids=5, position_ids=0, block_position_ids=0, segment_ids=-1, part_a=False)
    padded = {k: torch.cat([v, torch.full((1, 7), pad_values[k], dtype=v.dtype)], dim=1) for k, v in real.items()}
    for backend in ("sdpa", "dense"):
        torch.testing.assert_close(logits_with(model, backend, padded)[:, :20], logits_with(model, backend, real),
                                   atol=1e-6, rtol=1e-6)


def _rotate_half_reference(x, positions, theta):
    """ChatGLM/GPT-NeoX RoPE on all of x's last dim, written the textbook way."""
    dim = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2).float() / dim)
    freqs = positions[..., None].float() * inv_freq
    cos, sin = torch.cat([freqs, freqs], -1).cos()[:, :, None], torch.cat([freqs, freqs], -1).sin()[:, :, None]
    rotated = torch.cat([-x[..., dim // 2:], x[..., :dim // 2]], dim=-1)
    return x * cos + rotated * sin


def test_rope_2d_and_partial_rope_match_the_textbook_formula():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 10, 3, 16, generator=gen)
    pos, block = torch.randint(0, 50, (2, 10), generator=gen), torch.randint(0, 50, (2, 10), generator=gen)
    cfg_2d = model_config("glm-tiny", **SMALL, head_dim=16, position_encoding="rope_2d")
    ours = apply_rotary(x, *rotary_cos_sin(cfg_2d, pos, block, x.dtype), interleaved=False)
    expected = torch.cat([_rotate_half_reference(x[..., :8], pos, 1e4), _rotate_half_reference(x[..., 8:], block, 1e4)], -1)
    torch.testing.assert_close(ours, expected)
    cfg_1d = model_config("glm-tiny", **SMALL, head_dim=16, position_encoding="rope_1d", partial_rotary_factor=0.5,
                          rope_theta=500.0)
    ours = apply_rotary(x, *rotary_cos_sin(cfg_1d, pos, block, x.dtype), interleaved=False)
    torch.testing.assert_close(ours, torch.cat([_rotate_half_reference(x[..., :8], pos, 500.0), x[..., 8:]], -1))


@pytest.mark.parametrize("variant", ["chatglm", "glm130b", "glm4"])
@torch.no_grad()
def test_rope_logits_depend_only_on_relative_positions(glm_random_layout, variant):
    model = make_model(variant)
    batch = make_batch(glm_random_layout, 2)
    shifted = {**batch, "position_ids": batch["position_ids"] + 7, "block_position_ids": batch["block_position_ids"] + 3}
    torch.testing.assert_close(logits_with(model, "sdpa", shifted), logits_with(model, "sdpa", batch),
                               atol=1e-4, rtol=1e-4)


def test_init_is_deterministic_from_the_global_seed():
    a, b, c = make_model("glm1", seed=1), make_model("glm1", seed=1), make_model("glm1", seed=2)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), name
        if name.endswith("proj.weight"):
            assert not torch.equal(p, r), name


@pytest.mark.parametrize("variant", ["glm1", "chatglm"])
def test_init_scales(variant):
    model = make_model(variant, hidden_size=256, ffn_hidden_size=1024, num_layers=8)
    layer = model.layers["3"]
    if variant == "glm1":  # N(0, 0.02); residual outputs N(0, 0.02 / √(2·8))
        expected = {"q_proj": 0.02, "o_proj": 0.02 / 4, "up_proj": 0.02, "down_proj": 0.02 / 4}
    else:  # Xavier normal; β = (2·8)^-½ on v, o and the MLP
        xavier = math.sqrt(2 / (256 + 256))
        expected = {"q_proj": xavier, "v_proj": xavier / 4, "o_proj": xavier / 4,
                    "down_proj": math.sqrt(2 / (256 + 1024)) / 4}
    for name, std in expected.items():
        module = getattr(layer.self_attn, name, None) or getattr(layer.mlp, name)
        assert module.weight.std().item() == pytest.approx(std, rel=0.05), name
        if module.bias is not None:
            assert torch.equal(module.bias, torch.zeros_like(module.bias))


def test_embedding_grad_shrink_scales_only_embedding_gradients(glm_random_layout):
    batch = make_batch(glm_random_layout, 4)
    runs = {}
    for alpha in (1.0, 0.1):
        model = make_model("glm130b", embedding_grad_shrink=alpha, tie_embeddings=False)  # untied: pure lookup grad
        logits = logits_with(model, "sdpa", batch)
        logits.square().mean().backward()
        runs[alpha] = (logits.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(runs[0.1][0], runs[1.0][0])  # the forward is unchanged
    for name, grad in runs[1.0][1].items():
        expected = grad * 0.1 if name == "embed_tokens.weight" else grad
        torch.testing.assert_close(runs[0.1][1][name], expected, msg=name)


def test_config_loads_strictly_and_validates():
    cfg = model_config("glm-4-9b")
    assert from_dict(ModelConfig, to_dict(cfg), "model.yaml:model") == cfg
    with pytest.raises(ConfigError, match="model.yaml:model.*num_kv_heads=3"):
        from_dict(ModelConfig, {**to_dict(cfg), "num_kv_heads": 3}, "model.yaml:model")
    with pytest.raises(ConfigError, match="model.yaml:model.mlp"):
        from_dict(ModelConfig, {**to_dict(cfg), "mlp": "relu"}, "model.yaml:model")
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        model_config("glm-4-9b", partial_rotary_factor=0.01)
    with pytest.raises(ValueError, match="unknown model preset 'glm-5'"):
        build_model("glm-5")
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['hidden'\]"):
        build_model("glm-tiny", hidden=3)
    with pytest.raises(ValueError, match="hidden_size=100 is not divisible by num_heads=3; set head_dim"):
        build_model("glm-tiny", hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="attention_backend='fast'"):
        build_model("glm-tiny", attention_backend="fast")


def test_overrides_rederive_dependent_fields():
    cfg = model_config("glm-tiny", hidden_size=128, num_heads=8)
    assert (cfg.head_dim, cfg.num_kv_heads) == (16, 8)
    assert model_config("glm-4-9b", num_heads=16).num_kv_heads == 2  # GQA stays as set


def test_inputs_must_share_one_shape():
    model = make_model("glm1")
    ids = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"part_a \(1, 7\)"):
        model(ids, ids, ids, ids, torch.zeros(1, 7, dtype=torch.bool))


@pytest.mark.parametrize("backend", ["sdpa", "dense"])
@torch.no_grad()
def test_attention_runs_head_sharded_as_tensor_parallel_does(glm_random_layout, backend):
    """q/k/v split by rows and o by columns over 2 ranks: the partial outputs sum to the full one, so the
    head count really comes from the tensor shapes (nothing reads cfg.num_heads at run time)."""
    from pretrain.model.attention import build_attention
    from pretrain.model.glm import Attention
    from pretrain.model.positions import rotary_cos_sin

    model = make_model("glm4", bias=True)  # GQA 4 q heads / 2 kv heads, partial interleaved RoPE, o bias
    full = model.layers["0"].self_attn
    batch = make_batch(glm_random_layout, 9)
    x = torch.randn(3, 48, 64, generator=torch.Generator().manual_seed(9))
    attend = build_attention(backend, batch["segment_ids"], batch["part_a"])
    rotary = rotary_cos_sin(model.cfg, batch["position_ids"], batch["block_position_ids"], x.dtype)
    total = torch.zeros_like(x)
    for rank in range(2):
        shard = Attention(model.cfg)
        q_rows, kv_rows = slice(rank * 32, rank * 32 + 32), slice(rank * 16, rank * 16 + 16)  # 2 q heads, 1 kv head
        for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            source = getattr(full, name)
            setattr(shard, name, torch.nn.Linear(64, rows.stop - rows.start))
            getattr(shard, name).weight.copy_(source.weight[rows])
            getattr(shard, name).bias.copy_(source.bias[rows])
        shard.o_proj = torch.nn.Linear(32, 64)
        shard.o_proj.weight.copy_(full.o_proj.weight[:, q_rows])
        shard.o_proj.bias.copy_(full.o_proj.bias if rank == 0 else torch.zeros(64))  # rowwise: bias once
        total += shard(x, attend, rotary)
    torch.testing.assert_close(total, full(x, attend, rotary), atol=1e-5, rtol=1e-5)
