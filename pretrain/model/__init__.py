"""The GLM model family, free of parallelism code (see docs/architecture.md, "Model")."""
from pretrain.model.attention import build_attention, glm_dense_mask, visible_pairs
from pretrain.model.config import ModelConfig
from pretrain.model.export import export_hf
from pretrain.model.flops import batch_flops, flops_per_token, matmul_params
from pretrain.model.glm import GLMModel
from pretrain.model.presets import PRESETS, build_model, model_config

__all__ = ["GLMModel", "ModelConfig", "PRESETS", "build_model", "model_config", "export_hf", "build_attention",
           "glm_dense_mask", "visible_pairs", "batch_flops", "flops_per_token", "matmul_params"]
