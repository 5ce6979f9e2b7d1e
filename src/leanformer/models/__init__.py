"""Model families; :mod:`leanformer.models.registry` maps names to (Config, Model)."""

from leanformer.models.registry import MODELS, build_model, get_family

__all__ = ["MODELS", "build_model", "get_family"]
