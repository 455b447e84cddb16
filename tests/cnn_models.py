"""Small test networks covering the couplings channel pruning must get right (tests only:
the installed package ships no test models).

Each builder returns a random model in eval mode (batch norms with random statistics, so
folding bugs show) and an example input. Imported by the tests as ``cnn_models`` (``tests/``
is on the path, as for ``tiny_models``).

    residual        ResNet basic blocks, identity and strided 1x1 shortcuts
    mobile_se       MobileNet-style inverted residuals: depthwise conv + squeeze-excitation
    concat          DenseNet-style concatenation, an Inception-like block, a grouped conv
    split           split and chunk along channels (they fix those channels), group norm
    flatten         conv -> flatten -> Linear (each channel owns H*W columns)
    vit             patch embedding + pre-norm attention/MLP blocks with a registered attention
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from netslim.graph.attention import AttentionSpec, register_attention


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """ResNet basic block; a strided 1x1 conv shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride), nn.ReLU(), _conv_bn(cout, cout))
        self.shortcut = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResidualNet(nn.Module):
    """Stem, two stages of basic blocks, pooled classifier."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, width), nn.ReLU())
        self.stage1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.stage2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width))
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SqueezeExcite(nn.Module):
    """Channel gating: pool, reduce, expand, sigmoid, multiply."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise 3x3, squeeze-excitation, project 1x1, residual when shapes match."""

    def __init__(self, cin: int, cout: int, expand: int = 4, stride: int = 1) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(_conv_bn(cin, hidden, 1), nn.ReLU6())
        self.depthwise = nn.Sequential(_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6())
        self.se = SqueezeExcite(hidden, max(2, cin // 2))
        self.project = _conv_bn(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class MobileSENet(nn.Module):
    """MobileNet-style network of inverted residuals with squeeze-excitation."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 8, 3, 2), nn.Hardswish())
        self.blocks = nn.Sequential(InvertedResidual(8, 8), InvertedResidual(8, 12, stride=2), InvertedResidual(12, 12))
        self.head = nn.Sequential(_conv_bn(12, 32, 1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))))


class DenseLayer(nn.Module):
    """BN-ReLU-conv whose output is concatenated to its input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], dim=1)


class InceptionBlock(nn.Module):
    """Three branches (1x1; 1x1 then grouped 3x3; max-pool then 1x1) concatenated."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = nn.Sequential(_conv_bn(cin, 6, 1), nn.ReLU())
        self.b2 = nn.Sequential(_conv_bn(cin, 8, 1), nn.ReLU(), _conv_bn(8, 8, 3, groups=2), nn.ReLU())
        self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), _conv_bn(cin, 4, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x)], dim=1)


class ConcatNet(nn.Module):
    """Stem, two dense layers, an Inception-like block, classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 8), nn.ReLU())
        self.dense = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4))
        self.inception = InceptionBlock(16)
        self.fc = nn.Linear(18, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inception(self.dense(self.stem(x)))
        return self.fc(x.mean((2, 3)))


class SplitNet(nn.Module):
    """A conv split into two branches; one branch chunked again; group norm on the other."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.left = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU())
        self.right = nn.Conv2d(10, 12, 1)
        self.fc = nn.Linear(8 + 12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(F.relu(self.stem(x)), [6, 10], dim=1)
        r1, r2 = self.right(b).chunk(2, dim=1)
        y = torch.cat([self.left(a), r1 * 2.0, r2], dim=1)
        return self.fc(F.avg_pool2d(y, 2).amax((2, 3)))


class FlattenNet(nn.Module):
    """Conv features flattened into a Linear classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(_conv_bn(1, 6), nn.ReLU(), nn.MaxPool2d(2), _conv_bn(6, 8), nn.ReLU(), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(8 * 4 * 4, 24)
        self.fc2 = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(self.features(x).flatten(1))))


class Attention(nn.Module):
    """Multi-head self-attention whose shapes come from ``num_heads`` and ``head_dim``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


register_attention(Attention, AttentionSpec("q", "k", "v", "proj", heads="num_heads", head_dim="head_dim"))


class ViTBlock(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding, learned positions, two blocks, mean-pooled classifier."""

    def __init__(self, dim: int = 32, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.blocks = nn.Sequential(ViTBlock(dim, heads, 2 * dim), ViTBlock(dim, heads, 2 * dim))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # (B, 16 patches, dim)
        return self.fc(self.norm(self.blocks(x)).mean(1))


class Untraceable(nn.Module):
    """Data-dependent control flow: symbolic tracing must fail with a clear error."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if y.sum() > 0 else -y


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model.eval()


BUILDERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "residual": (ResidualNet, (2, 3, 16, 16)),
    "mobile_se": (MobileSENet, (2, 3, 16, 16)),
    "concat": (ConcatNet, (2, 3, 12, 12)),
    "split": (SplitNet, (2, 3, 8, 8)),
    "flatten": (FlattenNet, (2, 1, 16, 16)),
    "vit": (TinyViT, (2, 3, 16, 16)),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The test model ``name`` (a key of :data:`BUILDERS`) and an example input, seeded."""
    cls, shape = BUILDERS[name]
    torch.manual_seed(seed)
    return _randomize(cls(), seed), (torch.randn(shape, generator=torch.Generator().manual_seed(seed)),)
