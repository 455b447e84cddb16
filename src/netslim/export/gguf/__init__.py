"""GGUF export: one file for llama.cpp and other GGUF runtimes, written with the ``gguf`` package.

- :mod:`~netslim.export.gguf.write`: :func:`export_gguf`, the entry point (checks, atomic write);
- :mod:`~netslim.export.gguf.metadata`: architecture and hyperparameters, per-layer sizes;
- :mod:`~netslim.export.gguf.tensors`: tensor names and the q/k row permutation;
- :mod:`~netslim.export.gguf.encode`: each tensor's type, exact quantized grids or fallbacks;
- :mod:`~netslim.export.gguf.blocks`: the ggml 32-weight block structs, packed with numpy;
- :mod:`~netslim.export.gguf.kquants`: the K-quant super-blocks (Q3_K..Q6_K), packed and decoded;
- :mod:`~netslim.export.gguf.floatquant`, :mod:`~netslim.export.gguf.kquantize`,
  :mod:`~netslim.ops.scale_search`: float weights quantized to a block type by netslim's
  own scale (and minimum) search, and the fallbacks row lengths force;
- :mod:`~netslim.export.gguf.tokenizer`: ``tokenizer.*`` keys, copied from a source GGUF or built.
"""

from netslim.export.gguf.write import export_gguf

__all__ = ["export_gguf"]
