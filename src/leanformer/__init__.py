"""leanformer: make Transformer language models cheaper at every stage, and measure what each saving costs."""

__version__ = "0.1.0"


def load(path, device: str = "cpu"):
    """Load a trained model (run or checkpoint directory) in eval mode; see :mod:`leanformer.train.checkpoint`."""
    from leanformer.train.checkpoint import load_model

    return load_model(path, device=device)
