"""Masking strategies, one module each, registered by name (``base.register``); importing this package
imports every module in it, so a new file is all a new strategy needs."""
import importlib
import pkgutil

from pretrain.objectives.strategies.base import STRATEGIES, Context, Strategy, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["STRATEGIES", "Context", "Strategy", "register"]
