"""Tokenizers. Every tokenizer leanformer accepts has ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``.

- :class:`ByteTokenizer`: UTF-8 bytes 0..255 plus specials (``<pad>`` 256, ``<bos>`` 257, ``<eos>`` 258,
  ``<unk>`` 259), so ``vocab_size == 260``. Lossless for any text; ``decode`` replaces invalid UTF-8 sequences.
  (transformers' ``ByT5Tokenizer`` shifts bytes by 3 to put its specials first and needs the optional extra.)
- :class:`HFTokenizer`: adapter for a ``transformers``/``tokenizers`` tokenizer (by object, name or local path).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
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
        local = Path(name_or_path).is_dir()
        if local:
            check_tokenizer_files(name_or_path)
        try:
            return cls(AutoTokenizer.from_pretrained(str(name_or_path)))
        except Exception as e:  # noqa: BLE001 - a local folder that passed the checks may still hold bad values
            if not local and not isinstance(e, OSError | ValueError):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot load Hugging Face tokenizer {str(name_or_path)!r}: {first[:300]}") from None

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r})"


# JSON files a Hugging Face tokenizer folder may hold; each must be a UTF-8 JSON object.
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                        "vocab.json")


def check_tokenizer_files(directory: str | os.PathLike) -> None:
    """Raise a :class:`UserError` naming the first truncated or corrupted tokenizer file in ``directory``."""
    d = Path(directory)
    for name in TOKENIZER_JSON_FILES:
        f = d / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"tokenizer file {f} is corrupted (not UTF-8 text)") from None
        except json.JSONDecodeError as e:
            raise UserError(f"tokenizer file {f} is corrupted or truncated (invalid JSON: {e.msg} at line "
                            f"{e.lineno})") from None
        if not isinstance(data, dict):
            raise UserError(f"tokenizer file {f} is corrupted (expected a JSON object, got {type(data).__name__})")
    tj = d / "tokenizer.json"
    if tj.is_file():
        from tokenizers import Tokenizer as RustTokenizer

        try:
            RustTokenizer.from_file(str(tj))
        except Exception as e:  # noqa: BLE001 - the Rust library raises plain Exception
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"tokenizer file {tj} is corrupted: {first[:300]}") from None


def get_tokenizer(spec: str):
    """``'byte'`` -> :class:`ByteTokenizer`; ``'hf:<name or path>'`` (or an existing path) -> :class:`HFTokenizer`."""
    if spec == "byte":
        return ByteTokenizer()
    if spec.startswith("hf:"):
        return HFTokenizer.from_pretrained(spec[3:])
    if os.path.exists(spec):
        return HFTokenizer.from_pretrained(spec)
    raise UserError(f"data.tokenizer: unknown tokenizer {spec!r}; use 'byte', 'hf:<name>' or a local path")
