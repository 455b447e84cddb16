"""The calibration engine: captures block inputs, gathers statistics, applies methods."""

from netslim.engine.sequential import run_stages
from netslim.engine.stats import LayerStats, Stat

__all__ = ["LayerStats", "Stat", "run_stages"]
