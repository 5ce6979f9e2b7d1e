"""Errors that are the user's to fix.

The CLI prints a :class:`UserError` as one line (``leanformer: error: ...``) and exits non-zero, with no
traceback; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a config value, a path, a CLI argument. The message names the value and what is allowed."""


class ConfigError(UserError, ValueError):
    """A config key, type or value is not allowed."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated, corrupted or of an unknown format."""
