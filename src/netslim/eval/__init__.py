"""Evaluation: perplexity, model size, and the compression report."""
