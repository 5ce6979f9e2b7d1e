import json

import numpy as np
import pytest

from leanformer.data import ByteTokenizer, RandomWindows, load_source, sequential_windows, token_stream
from leanformer.data.sources import shakespeare_files
from leanformer.errors import UserError


def test_byte_tokenizer_roundtrip_and_specials():
    tok = ByteTokenizer()
    text = "Fair is foul — and foul is fair: ünïcödé ✓"
    ids = tok.encode(text)
    assert max(ids) < 256 and tok.decode(ids) == text
    assert tok.decode(ids + [tok.eos_id, tok.pad_id]) == text
    assert tok.vocab_size == 260


def test_shakespeare_split_by_play_is_fixed_and_disjoint():
    src = load_source("shakespeare")
    files = shakespeare_files()
    assert len(files) >= 37
    sizes = {s: len(src.documents(s)) for s in ("train", "validation", "test")}
    assert sum(sizes.values()) == len(files) and sizes["validation"] >= 3 and sizes["test"] >= 3
    test_titles = {d.splitlines()[0] for d in src.documents("test")}
    train_titles = {d.splitlines()[0] for d in src.documents("train")}
    assert not test_titles & train_titles
    assert src.documents("test") == load_source("shakespeare").documents("test")
    with pytest.raises(UserError, match="unknown split 'dev'"):
        src.documents("dev")


def test_local_folder_and_file_sources(tmp_path):
    for i in range(12):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document number {i}\n" * 5)
    src = load_source(str(tmp_path), val_fraction=0.2)
    assert sum(len(src.documents(s)) for s in ("train", "validation", "test")) == 12
    assert src.documents("validation") and src.documents("test")
    one = tmp_path / "one.txt"
    one.write_text("abcdefghij" * 100)
    s1 = load_source(str(one), val_fraction=0.1)
    assert "".join(s1.documents("train") + s1.documents("validation") + s1.documents("test")) == "abcdefghij" * 100
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02" * 10)
    with pytest.raises(UserError, match="looks binary"):
        load_source(str(tmp_path / "bin.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .txt or .md files"):
        load_source(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="is not 'shakespeare'"):
        load_source(str(tmp_path / "missing"))


def test_hf_dataset_from_local_json(tmp_path):
    pytest.importorskip("datasets")
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i} " * 8}) + "\n" for i in range(40)))
    src = load_source(f"hf:json:{path}", val_fraction=0.1)
    docs = [d for s in ("train", "validation", "test") for d in src.documents(s)]
    assert sorted(docs) == sorted(f"row {i} " * 8 for i in range(40))
    with pytest.raises(UserError, match="has no column 'body'"):
        load_source(f"hf:json:{path}", text_field="body")


def test_token_stream_is_cached_and_separated_by_eos(tmp_path):
    tok = ByteTokenizer()
    a = token_stream(["ab", "c"], tok, cache_key="k", cache_dir=str(tmp_path))
    assert a.tolist() == [97, 98, tok.eos_id, 99, tok.eos_id]
    (cached,) = list(tmp_path.glob("tokens-*.npy"))
    cached.write_bytes(b"torn")  # a corrupted cache is rebuilt, not trusted
    assert token_stream(["ab", "c"], tok, cache_key="k", cache_dir=str(tmp_path)).tolist() == a.tolist()


def test_random_windows_deterministic_and_shifted():
    tokens = np.arange(1000, dtype=np.int32)
    w = RandomWindows(tokens, seq_len=16, batch_size=4, seed=3)
    b5 = w.batch(5)
    assert np.array_equal(b5["input_ids"], RandomWindows(tokens, 16, 4, seed=3).batch(5)["input_ids"])
    assert not np.array_equal(b5["input_ids"], w.batch(6)["input_ids"])
    assert (b5["labels"] == b5["input_ids"] + 1).all()
    with pytest.raises(UserError, match="fewer than data.seq_len"):
        RandomWindows(tokens[:10], 16, 4)


def test_sequential_windows_cover_every_target_once():
    tokens = np.arange(103, dtype=np.int32)
    targets = [t for b in sequential_windows(tokens, 10, 3) for t in b["labels"].reshape(-1).tolist()]
    assert targets == list(range(1, 103))
