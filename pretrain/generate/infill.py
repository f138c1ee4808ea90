"""GLM blank filling: Part A once (bidirectional), then each blank's Part-B block, left to right.

A block starts with <sop> at its blank's position and block position 1 and is decoded token by
token, each new token at the same position and the next block position (all 1 for a model trained
with objective.block_positions=false), until the model writes <eop> (or <|endoftext|>, the end of the
document) or ``max_new_tokens``. The block of a [gMASK] blank of a run whose objective.gmask_positions
resolved to continue prolongs the text instead: <sop> at the blank's position + 1, each new token one
further. The next blank's <sop> follows, seeing Part A and every earlier block, exactly as Part B is
laid out in training (the eop itself is never an input). Rows of a batch
advance together, one token per step each: a row in a later block, or finished, is simply at
another position (finished rows feed padding that nothing attends to).

With ``use_cache`` the model runs over the new tokens only, with keys and values kept in a
``KVCache``; without, over the whole sequence at every step through its own attention (the
reference the cached path must equal token for token).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from pretrain.generate.kv_cache import KVCache, attached
from pretrain.generate.sampling import Sampling, next_tokens
from pretrain.objectives import rng
from pretrain.objectives.config import prolongs_gmask_blocks
from pretrain.tokens import SpecialTokens


class _Cached:
    def __init__(self, model: nn.Module, cache: KVCache):
        self.model, self.cache = model, cache

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with attached(self.model, self.cache):
            return self.model(*inputs)[:, -1]


class _Recompute:
    def __init__(self, model: nn.Module):
        self.model, self.inputs = model, None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.inputs = inputs if self.inputs is None else [torch.cat(pair, dim=1) for pair in zip(self.inputs, inputs)]
        return self.model(*self.inputs)[:, -1]


@torch.no_grad()
def fill_blanks(model: nn.Module, prompts: Sequence[np.ndarray], special: SpecialTokens, *,
                max_new_tokens: int = 32, sampling: Sampling = Sampling(), block_positions: bool = True,
                gmask_positions: str = "mask", banned: Sequence[int] = (), prompt_ids: Sequence[int] | None = None,
                use_cache: bool = True) -> list[list[list[int]]]:
    """For each prompt (Part A ids with its blanks, see prompt.parse_prompt), the tokens written into
    each blank, left to right (eop/eos not included). ``block_positions`` and ``gmask_positions`` ("mask"
    or "continue") as the run's resolved objective; ``banned``: ids never written (besides pad, cls, the
    mask tokens and sop); ``prompt_ids``: keys of the sampling draws (default 0..B-1)."""
    sampling.validate()
    prolongs = prolongs_gmask_blocks(gmask_positions)
    device = next(model.parameters()).device
    blank_ids = [special.mask, special.smask, special.gmask]
    blanks = [np.flatnonzero(np.isin(p, blank_ids)) for p in prompts]
    for i, found in enumerate(blanks):
        if len(found) == 0:
            raise ValueError(f"prompt {i} has no blank ({blank_ids} are the blank ids)")
    longest = max(len(p) for p in prompts)
    # per blank: its block prolongs the text (its tokens at blank + 1, + 2, ...) rather than staying at the blank
    prolong = [(p[found] == special.gmask) & prolongs for p, found in zip(prompts, blanks)]
    _check_positions(model, longest, max_new_tokens, any(p.any() for p in prolong))
    batch = len(prompts)
    # Part A, left-padded so that every row's next token goes in the same column.
    ids = torch.full((batch, longest), special.pad, dtype=torch.long)
    segment = torch.full((batch, longest), -1, dtype=torch.long)
    position = torch.zeros((batch, longest), dtype=torch.long)
    for row, tokens in enumerate(prompts):
        ids[row, longest - len(tokens):] = torch.as_tensor(tokens)
        segment[row, longest - len(tokens):] = 0
        position[row, longest - len(tokens):] = torch.arange(len(tokens))
    step = _Cached(model, KVCache(batch, longest + max(map(len, blanks)) * max_new_tokens, device)) \
        if use_cache else _Recompute(model)
    step(*(t.to(device) for t in (ids, position, torch.zeros_like(ids), segment, segment >= 0)))

    ban = torch.zeros(model.cfg.vocab_size, dtype=torch.bool, device=device)
    ban[[special.pad, special.cls, *blank_ids, special.sop, *banned]] = True
    stops = {special.eop, special.eos}
    keys = rng.keys(sampling.seed, np.arange(batch) if prompt_ids is None else np.asarray(prompt_ids))
    fills: list[list[list[int]]] = [[] for _ in range(batch)]
    current: list[list[int]] = [[] for _ in range(batch)]
    token = np.full(batch, special.sop)
    blank = np.array([found[0] for found in blanks])  # the position of the blank being filled
    grows = np.array([p[0] for p in prolong])  # its block prolongs the text
    in_block = np.ones(batch, dtype=np.int64)  # the input's place in its block, 1 at <sop>
    done = np.zeros(batch, dtype=bool)
    draw = 0
    while not done.all():
        pos = blank + np.where(grows, in_block, 0)
        block = in_block if block_positions else np.ones(batch, dtype=np.int64)
        inputs = [np.where(done, special.pad, token), pos, block, np.where(done, -1, 0)]
        columns = [torch.as_tensor(x, dtype=torch.long, device=device)[:, None] for x in inputs]
        logits = step(*columns, torch.zeros_like(columns[0], dtype=torch.bool))
        chosen = next_tokens(logits.masked_fill(ban, float("-inf")), sampling, keys, draw).tolist()
        draw += 1
        for row in np.flatnonzero(~done):
            if chosen[row] not in stops:
                current[row].append(chosen[row])
            if chosen[row] in stops or len(current[row]) == max_new_tokens:  # the block is complete
                fills[row].append(current[row])
                current[row] = []
                if len(fills[row]) == len(blanks[row]):
                    done[row] = True
                else:
                    token[row], blank[row], in_block[row] = special.sop, blanks[row][len(fills[row])], 1
                    grows[row] = prolong[row][len(fills[row])]
            else:
                token[row] = chosen[row]
                in_block[row] += 1
    return fills


def _check_positions(model: nn.Module, part_a_len: int, max_new_tokens: int, prolong: bool) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    cfg = model.cfg
    first_dim = part_a_len - 1 + (max_new_tokens if prolong else 0)
    if cfg.position_encoding == "learned_2d" and max(first_dim, max_new_tokens) > cfg.max_position_embeddings:
        raise ValueError(f"a prompt of {part_a_len} tokens with max_new_tokens={max_new_tokens} needs positions past "
                         f"the model's learned tables (max_position_embeddings={cfg.max_position_embeddings}); "
                         f"shorten the prompt or lower max_new_tokens")
