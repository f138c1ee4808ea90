"""Parallelism applied to the plain model from outside: device mesh, TP plan, FSDP2 (torchtitan order)."""
