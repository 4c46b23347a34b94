"""Errors a user can cause. Each message says what went wrong and what to do.

This module imports nothing beyond the standard library: the native extension and the deploy side
raise these too.
"""


class DeepcompError(Exception):
    """Base class of every error deepcomp raises for a user's mistake. The CLI prints it in one line."""


class DczError(DeepcompError):
    """A .dcz file that is truncated, corrupted, hostile or of an unsupported version."""


class UnsupportedOpError(DeepcompError):
    """The model holds an operation deepcomp cannot capture or run."""


class RecipeError(DeepcompError):
    """A recipe or a flag that overrides it is invalid."""


class ModelLoadError(DeepcompError):
    """A model specification or file that cannot be loaded."""


class DataError(DeepcompError):
    """A dataset that is missing or malformed."""


class InputShapeError(DeepcompError):
    """An input that does not match the model's input shape (or is not numeric)."""
