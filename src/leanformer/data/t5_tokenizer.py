"""Train a T5-style SentencePiece tokenizer locally (nanoT5 "other languages / tokenizers": its issues #11, #19).

``train_t5_tokenizer(source, vocab_size, out_dir)`` trains a SentencePiece *unigram* model (Kudo, 2018) on a text
source with T5's special ids (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, no BOS), then saves it as a Hugging Face
``T5Tokenizer`` directory with 100 sentinels ``<extra_id_0..99>`` at the top of the vocabulary (``<extra_id_0>`` =
``len(tokenizer) - 1``, counting down, as in the released T5 tokenizers). The directory then works everywhere a
tokenizer is named: ``data.tokenizer=hf:<out_dir>``.

Needs the ``sentencepiece`` package for training only; the saved tokenizer is a ``tokenizers`` Unigram model.
SentencePiece's NFKC character map is not carried over (it lives in a protobuf field), so text is used as is.

    python -m leanformer.data.t5_tokenizer --source shakespeare --vocab-size 4000 --out runs/spm-shakespeare
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from leanformer.errors import UserError

N_SENTINELS = 100


def train_t5_tokenizer(source: str, vocab_size: int, out_dir: str | os.PathLike, max_lines: int = 2_000_000):
    """Train on the ``train`` split of ``source`` (any :func:`leanformer.data.load_source` spec); return the
    ``transformers.T5Tokenizer`` saved in ``out_dir`` (``vocab_size`` pieces + 100 sentinels)."""
    try:
        import sentencepiece as spm
    except ImportError:
        raise UserError("training a T5 tokenizer needs `pip install sentencepiece`") from None
    from transformers import T5Tokenizer

    from leanformer.data.sources import load_source

    if vocab_size < 8:
        raise UserError(f"--vocab-size {vocab_size} is too small; give at least 8 (T5 uses 32000)")
    lines = []
    for doc in load_source(source).documents("train"):
        lines.extend(x for x in doc.splitlines() if x.strip())
        if len(lines) >= max_lines:
            break
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "spiece")
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines[:max_lines]), model_prefix=prefix, vocab_size=vocab_size,
                model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
                num_threads=1, minloglevel=2)
        except RuntimeError as e:
            raise UserError(f"sentencepiece training failed: {str(e).splitlines()[0]}") from None
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        vocab = [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(sp.get_piece_size())]
    # Sentinels in descending order at the top, so <extra_id_0> is the last id (T5's convention).
    vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(N_SENTINELS))]
    tok = T5Tokenizer(vocab=vocab, extra_ids=N_SENTINELS)
    top = tok.convert_tokens_to_ids("<extra_id_0>")
    if top != len(tok) - 1:  # pragma: no cover - guards against a transformers change
        raise RuntimeError(f"<extra_id_0> landed at {top}, expected {len(tok) - 1}")
    tok.save_pretrained(str(out_dir))
    return tok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="shakespeare", help="'shakespeare', a file/folder, or 'hf:<dataset>'")
    ap.add_argument("--vocab-size", type=int, default=4000, help="pieces before the 100 sentinels (T5: 32000)")
    ap.add_argument("--out", required=True, help="directory for the Hugging Face tokenizer files")
    args = ap.parse_args(argv)
    tok = train_t5_tokenizer(args.source, args.vocab_size, args.out)
    print(f"saved {type(tok).__name__} with {len(tok)} tokens to {args.out}; use data.tokenizer=hf:{args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
