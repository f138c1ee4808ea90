"""glm-pretrain: GLM blank-infilling pretraining (objective, model, data, trainer)."""

__version__ = "0.1.0"
