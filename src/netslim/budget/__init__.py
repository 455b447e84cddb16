"""Budget-driven search: choosing per-layer compression to meet a size, quality or speed budget."""
