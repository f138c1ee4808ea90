"""Parallelism applied to the plain model from outside (torchtitan order): the (pp, dp, cp, tp) device mesh,
TP plan, pipeline stages and schedules, context parallelism for the GLM mask, FSDP2, and the engines."""
