"""The DMC decode benchmark's own logic: its batch arithmetic and its decode step (benchmarks/bench_dmc_decode.py)."""

import importlib.util
import sys
from pathlib import Path

import torch

from leanformer.infer.layers import Fused
from leanformer.models.dmc import DMC, DMCConfig

spec = importlib.util.spec_from_file_location(
    "bench_dmc_decode", Path(__file__).parents[2] / "benchmarks" / "bench_dmc_decode.py")
bench = sys.modules.setdefault("bench_dmc_decode", importlib.util.module_from_spec(spec))  # dataclasses look it up
spec.loader.exec_module(bench)


def test_small_pages_fit_the_ratio_times_the_uncompressed_batch():
    def batch(cr, page, gqa=1):
        shape = bench.LLAMA_1B
        return bench.batch_fit(shape, shape["n_kv_heads"] // gqa, cr, 16384, 32, page, 64.0)["batch"]

    for cr in (2, 4, 8):
        assert batch(cr, 16) >= 0.995 * cr * batch(1, 16)
    assert batch(8, 128) < 0.95 * 8 * batch(1, 128)  # whole 128-slot pages: one page in 17 is padding at CR 8
    assert batch(4, 16, gqa=2) >= batch(8, 16)  # GQA 2x + DMC 4x holds as many sequences as DMC 8x


def test_decode_step_equals_the_models_incremental_decoding():
    torch.manual_seed(0)
    model = DMC(DMCConfig(vocab_size=61, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                          alpha_offset=0.0, window=3)).eval()
    for name, p in model.named_parameters():  # distinct gains, so a norm applied with the wrong weight shows
        if name.endswith("norm.weight"):
            torch.nn.init.uniform_(p, 0.5, 1.5)
    x = torch.randint(0, 61, (3, 9))
    with torch.no_grad():
        ref, got = model.new_caches(3, 32, impl="reference"), model.new_caches(3, 32, impl="reference")
        model(x[:, :5], caches=ref, pos=0)
        model(x[:, :5], caches=got, pos=0)
        tok, pos = x[:, 5:6].clone(), torch.tensor(5)
        for _ in range(4):
            want = model(tok, caches=ref, pos=int(pos))[:, -1].argmax(-1)
            bench.decode_step(model, got, tok, pos, Fused(False))
            assert torch.equal(tok[:, 0], want)
    assert int(pos) == 9
    for a, b in zip(ref, got):
        assert torch.equal(a.lengths, b.lengths) and torch.equal(a.k_pages, b.k_pages)
