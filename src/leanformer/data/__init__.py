"""Text sources, tokenizers, packing into fixed-length sequences (deterministic and resumable)."""

from leanformer.data.packing import RandomWindows, sequential_windows, token_stream
from leanformer.data.sources import SPLITS, TextSource, load_source, shakespeare_plays
from leanformer.data.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer, get_tokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "Tokenizer", "get_tokenizer", "RandomWindows", "sequential_windows",
           "token_stream", "SPLITS", "TextSource", "load_source", "shakespeare_plays"]
