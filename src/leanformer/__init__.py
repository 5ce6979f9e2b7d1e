"""leanformer: make Transformer language models cheaper at every stage, and measure what each saving costs."""

__version__ = "0.1.0"


def load(path, device: str = "cpu"):
    """Load a trained model (run or checkpoint directory) in eval mode; see :mod:`leanformer.train.checkpoint`."""
    from leanformer.train.checkpoint import load_model

    return load_model(path, device=device)


# Submodules load on first use (``leanformer.sparse.apply``, ``leanformer.tasks.TASKS``), so that ``import
# leanformer`` stays cheap (no torch) and the spelling of the README works without importing each one first.
_SUBMODULES = ("analysis", "cli", "cli_overrides", "config", "data", "demo", "devices", "errors", "eval", "kvcache",
               "models", "nn", "reference", "reliability", "sparse", "tasks", "train")


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SUBMODULES])
