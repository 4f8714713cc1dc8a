"""Errors a user can cause and fix. The CLI prints their message on one line, never a traceback."""

from __future__ import annotations


class GPT2TUIError(Exception):
    """Base for every user-facing error: the message says what was wrong and what to do."""


class ConfigError(GPT2TUIError, ValueError):
    """A model configuration is invalid or does not match the weights."""


class ModelNotFoundError(GPT2TUIError, FileNotFoundError):
    """A model name, path or file could not be found (or fetched)."""


class CheckpointError(GPT2TUIError, ValueError):
    """Weights on disk are unreadable, corrupt, or do not fit the model."""


class DataError(GPT2TUIError, ValueError):
    """Training or evaluation data that cannot be used: the message names the file, line and field."""


class TrainingError(GPT2TUIError, RuntimeError):
    """A training run that cannot start or go on as asked (nothing to resume, a run in the way, out of memory)."""


class OutputError(GPT2TUIError, OSError):
    """An output path that cannot be written."""


class OutputInTheWayError(OutputError, FileExistsError):
    """An output path holds something gpt2tui did not write there, which writing the output would destroy."""
