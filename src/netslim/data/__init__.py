"""Text sources and tokenized windows for calibration and evaluation.

WikiText-2 (test and valid, word-level release, CC BY-SA 3.0) ships in ``wikitext2/``.
"""

from netslim.data.sources import TextSource, packaged_wikitext2, read_text_file, resolve_text
from netslim.data.windows import TokenWindows, calibration_windows, evaluation_windows

__all__ = [
    "TextSource",
    "TokenWindows",
    "calibration_windows",
    "evaluation_windows",
    "packaged_wikitext2",
    "read_text_file",
    "resolve_text",
]
