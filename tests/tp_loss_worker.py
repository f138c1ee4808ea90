"""Run by tests/test_train_loss.py under torchrun (2 gloo ranks): GLMModel with the TP plan, once
through the unfused vocab-parallel loss (DTensor logits under loss_parallel) and once through the
chunked head loss, from the same initialization; prints the largest loss and gradient differences."""
import torch
import torch.distributed as dist

from pretrain.model.glm import GLMModel
from pretrain.model.presets import model_config
from pretrain.parallel.mesh import ParallelDims, build_mesh, init_distributed
from pretrain.parallel.parallelize import parallelize
from pretrain.train.loss import CrossEntropyHead, loss_context, token_cross_entropy


def loss_and_grads(mesh, sequence_parallel: bool, chunked: bool):
    torch.manual_seed(0)
    cfg = model_config("glm-tiny", vocab_size=256, tie_embeddings=False, num_kv_heads=2, position_encoding="rope_1d")
    model = parallelize(GLMModel(cfg), mesh, sequence_parallel=sequence_parallel, activation_checkpointing=False,
                        compile=False, param_dtype=torch.float32, reshard_after_forward=True)
    gen = torch.Generator().manual_seed(1)
    batch, seq_len = 2, 32
    ids, targets = (torch.randint(0, 256, (batch, seq_len), generator=gen) for _ in range(2))
    positions = torch.arange(seq_len).expand(batch, seq_len)
    inputs = (ids, positions, positions * 0, torch.zeros_like(ids), torch.zeros(batch, seq_len, dtype=torch.bool))
    mask = (torch.rand(batch, seq_len, generator=gen) < 0.7).float()
    if chunked:
        loss, _ = model(*inputs, output_head=CrossEntropyHead(targets, mask, mask.sum().item(), chunk_tokens=7))
        loss.backward()
    else:
        logits = model(*inputs)
        with loss_context(logits):
            loss = (token_cross_entropy(logits, targets) * mask).sum() / mask.sum()
            loss.backward()
    return loss.item(), {name: p.grad.full_tensor() for name, p in model.named_parameters()}


def main() -> None:
    init_distributed("cpu")
    mesh = build_mesh("cpu", ParallelDims(dist.get_world_size(), dist.get_world_size()))
    for sequence_parallel in (False, True):
        loss, grads = loss_and_grads(mesh, sequence_parallel, chunked=False)
        chunked_loss, chunked_grads = loss_and_grads(mesh, sequence_parallel, chunked=True)
        grad_error = max(((grads[n] - chunked_grads[n]).abs().max() / grads[n].abs().max().clamp(min=1e-12)).item()
                         for n in grads)
        if dist.get_rank() == 0:
            print(f"sequence_parallel={sequence_parallel} {abs(loss - chunked_loss) / abs(loss):.3e} {grad_error:.3e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
