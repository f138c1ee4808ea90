"""Which inputs a preprocessing node tokenizes: a deterministic share of the plan.

Every node computes the same assignment from the plan alone (input sizes, in plan order): inputs are
taken largest first and each goes to the node with the fewest bytes so far (ties: the lower rank).
The shards an input produces do not depend on which node made them, so any number of nodes gives
the single-node result byte for byte. The node comes from ``--num-nodes/--node-rank``, else a Slurm
array (``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``, offset by ``SLURM_ARRAY_TASK_MIN``), else
torchrun's ``RANK``/``WORLD_SIZE``, else one node.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

from pretrain.data.sources import Input


def assign(plan: Sequence[Input], num_nodes: int) -> list[int]:
    """Node rank of every input of the plan."""
    loads = [0] * num_nodes
    nodes = [0] * len(plan)
    for index in sorted(range(len(plan)), key=lambda i: (-plan[i].size, i)):
        node = min(range(num_nodes), key=lambda r: (loads[r], r))
        nodes[index] = node
        loads[node] += max(plan[index].size, 1)
    return nodes


def share(plan: Sequence[Input], num_nodes: int, node_rank: int) -> list[Input]:
    return [source for source, node in zip(plan, assign(plan, num_nodes)) if node == node_rank]


def resolve_node(num_nodes: int | None, node_rank: int | None, env: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """(num_nodes, node_rank) from the arguments, a Slurm array, torchrun, or a single node."""
    if num_nodes is None and node_rank is None:
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            num_nodes = int(env["SLURM_ARRAY_TASK_COUNT"])
            node_rank = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        elif "RANK" in env and "WORLD_SIZE" in env:
            num_nodes, node_rank = int(env["WORLD_SIZE"]), int(env["RANK"])
    if node_rank is None and num_nodes is not None and num_nodes > 1:
        raise ValueError(f"--num-nodes {num_nodes} needs --node-rank (or a Slurm array / torchrun environment)")
    num_nodes = 1 if num_nodes is None else num_nodes
    node_rank = 0 if node_rank is None else node_rank
    if num_nodes < 1 or not 0 <= node_rank < num_nodes:
        raise ValueError(f"node rank {node_rank} of {num_nodes} nodes: need num_nodes >= 1 and 0 <= node_rank < "
                         f"num_nodes (Slurm arrays: --array=0-{max(num_nodes - 1, 0)})")
    return num_nodes, node_rank
