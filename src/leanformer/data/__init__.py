"""Text sources, tokenizers, packing into fixed-length sequences (deterministic and resumable)."""

from leanformer.data.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer, get_tokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "Tokenizer", "get_tokenizer"]
