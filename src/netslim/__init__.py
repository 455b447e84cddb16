"""netslim: prune, factorize and quantize PyTorch and Hugging Face models.

Example:
    >>> import netslim
    >>> lm = netslim.load_model("smollm2-135m")
    >>> result = netslim.compress(lm, netslim.WandaConfig(sparsity=0.5))
    >>> netslim.save(result, "out/")
    >>> netslim.evaluate(netslim.load("out/")).ppl
"""

__version__ = "0.1.0"

from netslim.api import CompressionResult, Evaluation, calibration, compress, evaluate  # noqa: E402
from netslim.channel_job import channel_job  # noqa: E402
from netslim.errors import NetslimError  # noqa: E402
from netslim.eval.similarity import evaluate_similarity  # noqa: E402
from netslim.export import load, save  # noqa: E402
from netslim.graph.api import ChannelPruneConfig, ChannelPruneResult, prune_channels  # noqa: E402
from netslim.methods import DepthConfig, MagnitudeConfig, WandaConfig, WidthConfig, method_names  # noqa: E402
from netslim.methods import ASVDConfig, EoRAConfig, SVDConfig, SVDLLMConfig  # noqa: E402
from netslim.methods import ChannelsConfig, SliceGPTConfig  # noqa: E402
from netslim.methods import GPTQConfig, RTNConfig, SparseGPTConfig  # noqa: E402
from netslim.models.loading import LoadedModel, load_model  # noqa: E402
from netslim.models.zoo import PretrainedModel, load_pretrained  # noqa: E402
from netslim.recipe import load_recipe, parse_recipe  # noqa: E402

__all__ = [
    "ChannelPruneConfig",
    "ChannelsConfig",
    "ChannelPruneResult",
    "ASVDConfig",
    "EoRAConfig",
    "SVDConfig",
    "SVDLLMConfig",
    "CompressionResult",
    "DepthConfig",
    "Evaluation",
    "LoadedModel",
    "MagnitudeConfig",
    "NetslimError",
    "PretrainedModel",
    "SliceGPTConfig",
    "GPTQConfig",
    "RTNConfig",
    "SparseGPTConfig",
    "WandaConfig",
    "WidthConfig",
    "calibration",
    "compress",
    "evaluate",
    "evaluate_similarity",
    "load",
    "load_model",
    "load_pretrained",
    "load_recipe",
    "method_names",
    "parse_recipe",
    "prune_channels",
    "channel_job",
    "save",
]
