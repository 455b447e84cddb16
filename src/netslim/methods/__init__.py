"""Compression methods. Each module registers one method; this list is the registry's source."""

from netslim.methods import depth, magnitude, wanda, width  # noqa: F401  (registration side effect)
from netslim.methods import eora, lowrank  # noqa: F401  (registration side effect)
from netslim.methods import slicegpt  # noqa: F401  (registration side effect)
from netslim.methods import gptq, rtn, sparsegpt  # noqa: F401  (registration side effect)
from netslim.methods import channels  # noqa: F401  (registration side effect)
from netslim.methods import recover  # noqa: F401  (registration side effect)
from netslim.methods.base import MethodConfig, Scope
from netslim.methods.channels import ChannelsConfig
from netslim.methods.eora import EoRAConfig
from netslim.methods.lowrank import ASVDConfig, LowRankConfig, SVDConfig, SVDLLMConfig
from netslim.methods.depth import DepthConfig
from netslim.methods.magnitude import MagnitudeConfig
from netslim.methods.recover import RecoverConfig
from netslim.methods.registry import build_config, get_method, method_names, register_method
from netslim.methods.slicegpt import SliceGPTConfig
from netslim.methods.gptq import GPTQConfig
from netslim.methods.rtn import RTNConfig
from netslim.methods.sparsegpt import SparseGPTConfig
from netslim.methods.wanda import WandaConfig
from netslim.methods.width import WidthConfig

__all__ = [
    "ASVDConfig",
    "ChannelsConfig",
    "EoRAConfig",
    "LowRankConfig",
    "SVDConfig",
    "SVDLLMConfig",
    "DepthConfig",
    "MagnitudeConfig",
    "MethodConfig",
    "Scope",
    "SliceGPTConfig",
    "GPTQConfig",
    "RTNConfig",
    "RecoverConfig",
    "SparseGPTConfig",
    "WandaConfig",
    "WidthConfig",
    "build_config",
    "get_method",
    "method_names",
    "register_method",
]
