"""Tokenizers. Every tokenizer leanformer accepts has ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``.

- :class:`ByteTokenizer`: UTF-8 bytes 0..255 plus specials (``<pad>`` 256, ``<bos>`` 257, ``<eos>`` 258,
  ``<unk>`` 259), so ``vocab_size == 260``. Lossless for any text; ``decode`` replaces invalid UTF-8 sequences.
- :class:`HFTokenizer`: adapter for a ``transformers``/``tokenizers`` tokenizer (by object, name or local path).
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from leanformer.errors import UserError


@runtime_checkable
class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes + 4 specials. ``encode`` never adds specials; ``decode`` drops them."""

    pad_id, bos_id, eos_id, unk_id = 256, 257, 258, 259
    vocab_size = 260
    name = "byte"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class HFTokenizer:
    """Wraps a Hugging Face tokenizer; ``encode`` adds no special tokens so packed text stays contiguous."""

    def __init__(self, tok):
        self.tok = tok
        self.name = getattr(tok, "name_or_path", "hf")
        self.vocab_size = len(tok)
        self.eos_id = tok.eos_token_id
        self.bos_id = tok.bos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike) -> HFTokenizer:
        try:
            from transformers import AutoTokenizer
        except ImportError:  # pragma: no cover - exercised only without the extra
            raise UserError("Hugging Face tokenizers need `pip install leanformer[hf]`") from None
        try:
            return cls(AutoTokenizer.from_pretrained(str(name_or_path)))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load Hugging Face tokenizer {str(name_or_path)!r}: {str(e).splitlines()[0]}") \
                from None

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r})"


def get_tokenizer(spec: str):
    """``'byte'`` -> :class:`ByteTokenizer`; ``'hf:<name or path>'`` (or an existing path) -> :class:`HFTokenizer`."""
    if spec == "byte":
        return ByteTokenizer()
    if spec.startswith("hf:"):
        return HFTokenizer.from_pretrained(spec[3:])
    if os.path.exists(spec):
        return HFTokenizer.from_pretrained(spec)
    raise UserError(f"data.tokenizer: unknown tokenizer {spec!r}; use 'byte', 'hf:<name>' or a local path")
