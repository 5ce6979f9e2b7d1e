"""Inference at a real model's scale: a static-cache generation loop over Hugging Face Llama-family models with the
sparse prefill and decode methods (:class:`Engine`), the caches those methods own (:mod:`.cache`: physical
eviction for SnapKV, Ada-SnapKV and streaming; pages for Quest), the decode kernel over device-side lengths
(:mod:`.kernels`), and the ``leanformer speed`` benchmark (:mod:`.speed`)."""

from leanformer.infer.engine import Batch, Engine

__all__ = ["Engine", "Batch"]
