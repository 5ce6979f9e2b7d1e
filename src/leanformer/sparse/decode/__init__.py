"""Decode methods: the prompt is processed densely; each generation step attends to a subset of the cache."""
