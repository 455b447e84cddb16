"""Writing compressed models to disk and loading them back."""

from netslim.export.load import load
from netslim.export.save import save

__all__ = ["load", "save"]
