"""User-facing errors.

Every mistake a user can make (a typo in a recipe, an unknown model family, a missing file)
raises a subclass of :class:`NetslimError` whose message is one line saying what to change.
The CLI prints that line and exits with status 2 instead of a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Container, Iterable


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


# One vocabulary: how much a stage removes is ``ratio`` and the regularization of a Gram or
# Hessian is ``damp``, for every method. Earlier spellings are refused, naming the new one.
RENAMED_SETTINGS = {
    "sparsity": "ratio",
    "slicing": "ratio",
    "target_params": "ratio (with measure: params)",
    "target_flops": "ratio (with measure: macs)",
    "blocks": "ratio (a fraction of the blocks) or remove (block indices)",
    "block_sparsity": "block_ratios",
    "damp_percent": "damp",
    "damping": "damp",
    "eps": "damp",
}


def refuse_renamed(settings: Iterable[str], fields: Container[str], where: str = "") -> None:
    """Refuse a setting spelled the old way, naming the new spelling.

    Raises:
        ConfigError: e.g. ``"wanda: 'sparsity' is now spelled ratio"``.
    """
    for key in settings:
        if key in RENAMED_SETTINGS and key not in fields:
            raise ConfigError(f"{where}'{key}' is now spelled {RENAMED_SETTINGS[key]}")
