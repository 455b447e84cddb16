"""netslim: prune, factorize and quantize PyTorch and Hugging Face models.

Example:
    >>> import netslim
    >>> lm = netslim.load_model("smollm2-135m")
    >>> result = netslim.compress(lm, netslim.WandaConfig(ratio=0.5))
    >>> netslim.save(result, "out/")
    >>> netslim.evaluate(netslim.load("out/")).ppl
"""

__version__ = "0.1.0"

# Names are imported on first use (PEP 562), so `import netslim` and `netslim --help` stay fast:
# the LLM engine pulls in transformers, which takes seconds to import.
_EXPORTS = {
    "netslim.api": ("CompressionResult", "Evaluation", "calibration", "compress", "evaluate", "export_gguf",
                    "recover"),
    "netslim.budget.run": ("SearchResult", "search"),
    "netslim.budget.space": ("Space",),
    "netslim.job": ("Protocol", "compress_job"),
    "netslim.errors": ("NetslimError",),
    "netslim.eval.similarity": ("evaluate_similarity",),
    "netslim.export.load": ("load",),
    "netslim.export.save": ("save",),
    "netslim.graph.api": ("ChannelPruneConfig", "ChannelPruneResult", "prune_channels"),
    "netslim.methods": ("ASVDConfig", "ChannelsConfig", "DepthConfig", "EoRAConfig", "GPTQConfig", "MagnitudeConfig",
                        "RTNConfig", "RecoverConfig", "SVDConfig", "SVDLLMConfig", "SliceGPTConfig", "SparseGPTConfig", "WandaConfig",
                        "WidthConfig", "method_names"),
    "netslim.models.loading": ("LoadedModel", "load_model"),
    "netslim.models.zoo": ("PretrainedModel", "load_pretrained"),
    "netslim.recipe": ("load_recipe", "parse_recipe"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    import importlib  # noqa: PLC0415

    if name not in _WHERE:
        raise AttributeError(f"module 'netslim' has no attribute '{name}'")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
