"""The global gradient norm and clipping, for parameters that live on different device meshes
(TP-sharded weights on (dp, tp), replicated norms on dp only, pipeline stages on their own ranks)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor


@torch.no_grad()
def clip_grad_norm_(parameters: list[nn.Parameter], max_norm: float, pp_group: dist.ProcessGroup | None = None,
                    uncounted: list[nn.Parameter] = ()) -> torch.Tensor:
    """Global L2 norm of all gradients (over every rank's shards); clip to ``max_norm`` if > 0.

    torch's clip_grad_norm_ stacks per-tensor norms, which fails for DTensors on different meshes,
    so the norm is taken per mesh, materialized, and combined; with pipeline stages the squares are
    then summed over ``pp_group`` (torchtitan's). ``uncounted``: copies whose gradient another rank
    already counts (a tied head's embedding on the last stage); they are clipped, not counted."""
    skip = {id(param) for param in uncounted}
    params_by_mesh: dict[object, list[nn.Parameter]] = {}
    for param in parameters:
        if param.grad is not None:
            params_by_mesh.setdefault(mesh_of(param), []).append(param)
    squares = [torch.zeros((), device=parameters[0].device)]
    for params in params_by_mesh.values():
        counted = [p.grad for p in params if id(p) not in skip]
        if counted:
            norm = torch.nn.utils.get_total_norm(counted, norm_type=2.0)
            squares.append((norm.full_tensor() if isinstance(norm, DTensor) else norm).float() ** 2)
    total = torch.stack(squares).sum()
    if pp_group is not None:
        dist.all_reduce(total, group=pp_group)
    total = total.sqrt()
    if max_norm > 0:
        for params in params_by_mesh.values():
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def mesh_of(tensor: torch.Tensor):
    return tensor.device_mesh if isinstance(tensor, DTensor) else None
