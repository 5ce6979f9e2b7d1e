"""Cache structures for decoding: paged / per-head variable-length caches (DMC in :mod:`.dmc_cache`).

Submodules are imported directly (``from leanformer.kvcache.dmc_cache import DMCCache``), so adding a cache here
touches no shared file.
"""
