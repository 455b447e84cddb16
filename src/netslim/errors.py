"""User-facing errors.

Every mistake a user can make (a typo in a recipe, an unknown model family, a missing file)
raises a subclass of :class:`NetslimError` whose message is one line saying what to change.
The CLI prints that line and exits with status 2 instead of a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NetslimError(Exception):
    """Base class of all errors caused by user input."""


class ConfigError(NetslimError, ValueError):
    """A recipe, method config or option is invalid."""


class UnsupportedModelError(NetslimError, ValueError):
    """The model family has no adapter."""


class ModelNotFoundError(NetslimError, FileNotFoundError):
    """A model source could not be resolved to a folder, file, alias or hub id."""


class DataNotFoundError(NetslimError, FileNotFoundError):
    """A text source (calibration or evaluation) could not be found."""


class OutputExistsError(NetslimError, FileExistsError):
    """The output folder exists and overwriting was not asked for."""


class ModelFileError(NetslimError, ValueError):
    """A model or tokenizer file exists but cannot be used: corrupt, truncated or not what its name says."""


class CustomCodeError(UnsupportedModelError):
    """The model asks to run its own Python code (an ``auto_map``), which netslim never does."""


class ArtifactError(NetslimError):
    """A netslim output folder is damaged or foreign: a file is missing, truncated or inconsistent."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
