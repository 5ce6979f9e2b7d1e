"""The science half: what each saving costs and what it keeps.

- :mod:`~leanformer.analysis.flops` — the one FLOP / memory-traffic accounting module (presets, training MFU,
  prefill / decode cost with pattern-estimation overhead from :mod:`~leanformer.analysis.estimation`).
- :mod:`~leanformer.analysis.store` — read the sweep results store; :mod:`~leanformer.analysis.synthetic` writes a
  synthetic one with known structure.
- :mod:`~leanformer.analysis.isoflops` — accuracy against cost, Pareto frontiers, larger-sparse vs smaller-dense.
- :mod:`~leanformer.analysis.stats` — paired accuracy-preservation tests across a sparsity ladder.
- :mod:`~leanformer.analysis.scaling` — log-linear scaling-law fits and budget growth with length.
- :mod:`~leanformer.analysis.plots`, :mod:`~leanformer.analysis.report`, :mod:`~leanformer.analysis.cli` —
  ``leanformer analyze STORE --out DIR``.

Submodules are imported on demand (``from leanformer.analysis import flops``) so that importing this package is free.
"""
