"""User-facing errors: one line that names the input and says what to do.

The CLI and the serve protocol print ``str(error)`` for a ``GanfitError`` and exit non-zero,
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GanfitError(Exception):
    """An error the user can act on (bad input, missing file, refused overwrite)."""

    exit_code = 2


class InputImageError(GanfitError):
    """A photo could not be read, or holds no usable face."""


class NoFaceError(InputImageError):
    """No face was found in a photo."""


class OutputError(GanfitError):
    """The output location cannot be written, or exists and --force was not given."""


class ModelDataError(GanfitError):
    """A model file is missing or malformed."""


class FitDivergedError(GanfitError):
    """An optimisation ran away (a loss became infinite or NaN, or rose instead of falling):
    a setting, usually a learning rate or a loss weight, is too large."""
