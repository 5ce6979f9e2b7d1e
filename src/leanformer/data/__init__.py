"""Text sources, tokenizers, packing into fixed-length sequences (deterministic and resumable).

Names are imported lazily so that ``leanformer.data.sources`` (pure Python) does not pull in torch.
"""

import importlib

_EXPORTS = {
    "ByteTokenizer": "tokenizers", "HFTokenizer": "tokenizers", "Tokenizer": "tokenizers",
    "get_tokenizer": "tokenizers",
    "RandomWindows": "packing", "sequential_windows": "packing", "token_stream": "packing",
    "SPLITS": "sources", "TextSource": "sources", "load_source": "sources", "shakespeare_plays": "sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"leanformer.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'leanformer.data' has no attribute {name!r}")
