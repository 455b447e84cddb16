"""Text sources and tokenized windows for calibration and evaluation."""

from netslim.data.sources import TextSource, resolve_text
from netslim.data.windows import TokenWindows, calibration_windows, evaluation_windows

__all__ = [
    "TextSource",
    "TokenWindows",
    "calibration_windows",
    "evaluation_windows",
    "resolve_text",
]
