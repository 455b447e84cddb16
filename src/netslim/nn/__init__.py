"""Compressed module types (factorized, quantized, compensated) that replace nn.Linear."""
