"""Writing compressed models to disk and loading them back."""

from netslim.export.load import load
from netslim.export.save import round_for_storage, save

__all__ = ["load", "round_for_storage", "save"]
