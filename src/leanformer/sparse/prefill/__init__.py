"""Prefill methods: the whole prompt is processed with a sparse pattern (one file per method)."""
