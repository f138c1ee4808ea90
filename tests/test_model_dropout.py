"""Attention-probability dropout (GLM-1's 0.1): exact no-op in eval mode, statistically right in training on
the backends that have it (sdpa, including its CPU prefix-causal path, and dense), refused by flex."""
import math

import pytest
import torch

from pretrain.model import ModelConfig, build_attention, build_model, glm_dense_mask

P = 0.25
# one row: segment 0 with Part A [0, 5) and Part B [5, 12), padding, segment 1 with Part B only
SEGMENTS = torch.tensor([[0] * 12 + [-1] * 2 + [1] * 6])
PART_A = torch.tensor([[True] * 5 + [False] * 7 + [False] * 2 + [False] * 6])
SEQ = SEGMENTS.shape[1]


def probabilities(backend: str, dropout_p: float, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The attention weights themselves: with v = identity over keys, out[.., query, key] = weight."""
    v = torch.eye(SEQ).expand(1, q.shape[1], SEQ, SEQ)
    return build_attention(backend, SEGMENTS, PART_A, dropout_p=dropout_p)(q, k, v)


@pytest.mark.parametrize("backend", ["sdpa", "dense"])
def test_training_dropout_drops_visible_weights_at_rate_p_and_is_unbiased(backend):
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, SEQ, SEQ), torch.randn(1, 2, SEQ, SEQ)
    real = (SEGMENTS >= 0)[0]  # padding queries (their own value, whatever the backend) are not looked at
    visible = glm_dense_mask(SEGMENTS, PART_A)[0][real]  # [real queries, keys]
    exact = probabilities(backend, 0.0, q, k)[..., real, :]
    draws = torch.stack([probabilities(backend, P, q, k)[..., real, :] for _ in range(200)])  # [N, 1, H, R, S]
    kept = draws != 0
    assert not kept[..., ~visible].any()  # nothing leaks past the mask
    torch.testing.assert_close(draws[kept], (exact.expand_as(draws) / (1 - P))[kept])  # kept weights rescaled
    n = int(visible.sum()) * draws.shape[0] * 2
    dropped = 1 - kept[..., visible].float().mean().item()
    assert abs(dropped - P) < 5 * math.sqrt(P * (1 - P) / n)  # binomial, 5 sigma
    spread = 5 * math.sqrt(P / (1 - P) / draws.shape[0])  # 5 sigma of the mean of weight / (1 - P) or 0
    assert (draws.mean(0) - exact).abs().max() < spread  # unbiased


def test_eval_mode_is_exact_and_training_mode_trains(glm_random_layout):
    torch.manual_seed(0)
    with_dropout = build_model("glm-tiny", vocab_size=128, attention_dropout=0.1, dropout=0.1,
                               attention_backend="sdpa").eval()
    plain = build_model("glm-tiny", vocab_size=128, attention_backend="sdpa").eval()
    plain.load_state_dict(with_dropout.state_dict())
    segment_ids, part_a = glm_random_layout(3, 2, 40)
    batch = dict(input_ids=torch.randint(0, 128, (2, 40)), position_ids=torch.randint(0, 40, (2, 40)),
                 block_position_ids=torch.randint(0, 40, (2, 40)), segment_ids=segment_ids, part_a=part_a)
    assert torch.equal(with_dropout(**batch), plain(**batch))
    with_dropout.train()
    first = with_dropout(**batch)
    first.square().mean().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in with_dropout.parameters())
    assert not torch.equal(first, with_dropout(**batch))  # a new mask each call


def test_flex_refuses_attention_dropout_in_one_line():
    with pytest.raises(ValueError, match="attention_dropout=0.1 needs attention_backend sdpa, dense or auto"):
        ModelConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, ffn_hidden_size=8,
                    max_position_embeddings=8, attention_backend="flex", attention_dropout=0.1).validate()
    with pytest.raises(ValueError, match="needs the sdpa or dense backend: FlexAttention has none"):
        build_attention("flex", SEGMENTS, PART_A, dropout_p=0.1)
    model = build_model("glm-large", num_layers=1, hidden_size=32, num_heads=2, vocab_size=64)
    assert model.attention_backend(torch.device("cuda")) == "sdpa"  # auto avoids flex when there is dropout
    assert build_model("glm-tiny", vocab_size=64).attention_backend(torch.device("cuda")) == "flex"
