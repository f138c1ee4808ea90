"""GLM's second position stream is used: changing block_position_ids alone changes Part-B logits and leaves
Part A's (which sees no Part B), for learned 2-D tables and 2-D RoPE. A block table looked up with
position_ids (or block ids ignored) fails this."""
import pytest
import torch

from pretrain.model import build_model

SMALL = dict(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, ffn_hidden_size=96, max_position_embeddings=64)
ENCODINGS = {"learned_2d": dict(), "rope_2d": dict(position_encoding="rope_2d", norm_placement="deepnorm")}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_block_position_ids_alone_change_part_b_logits(encoding):
    torch.manual_seed(0)
    model = build_model("glm-tiny", **SMALL, **ENCODINGS[encoding]).eval()
    # Part A: 10 tokens with a [MASK] at 3; Part B: two blocks of 4 at the mask's position 3 and at 7
    sep, seq_len = 10, 18
    input_ids = torch.randint(0, 128, (1, seq_len), generator=torch.Generator().manual_seed(1))
    position_ids = torch.cat([torch.arange(sep), torch.tensor([3] * 4 + [7] * 4)])[None]
    block_position_ids = torch.cat([torch.zeros(sep, dtype=torch.long), torch.tensor([1, 2, 3, 4] * 2)])[None]
    fixed = dict(input_ids=input_ids, position_ids=position_ids, segment_ids=torch.zeros(1, seq_len, dtype=torch.long),
                 part_a=(torch.arange(seq_len) < sep)[None])
    shifted = block_position_ids.clone()
    shifted[0, sep:] += 5  # the same tokens at the same positions, other offsets inside their blocks
    with torch.no_grad():
        before = model(**fixed, block_position_ids=block_position_ids)
        after = model(**fixed, block_position_ids=shifted)
    assert torch.equal(before[0, :sep], after[0, :sep])  # Part A cannot see Part B
    changed = (before[0, sep:] - after[0, sep:]).abs().amax(-1)
    assert (changed > 1e-3).all(), changed  # every Part-B token reads its own block position
