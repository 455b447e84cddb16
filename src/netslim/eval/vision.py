"""Agreement of a compressed image classifier with its dense original, on fixed natural images.

No labelled ImageNet data is needed: the dense model's predictions are the labels.

Inputs (:func:`photo_crops`): the two photographs bundled with scikit-learn
(``sklearn.datasets.load_sample_images``: ``china.jpg``, a temple, and ``flower.jpg``, both
427 x 640), cut into seeded random square crops (side 35% to 100% of the short edge, uniform
position), half of them mirrored, resized to ``size`` with antialiased bilinear interpolation.
Pixels stay on the 0..255 scale; normalize them as the model expects. Crops alternate between
the two photos. Another ``seed`` gives other crops (for calibration, say).

Scores (:func:`agreement`): top-1 agreement = share of inputs where the compressed model's
top class is the dense model's; top-5 agreement = share where the dense top class is among
the compressed model's five best (top-5 accuracy with the dense predictions as labels).
:func:`mean_kl` is a finer measure: the mean KL divergence of the compressed model's class
distribution from the dense one's (0 when identical).

Example:
    >>> x = lite_normalize(photo_crops(64))
    >>> agreement(dense(x), pruned(x))
    {'top1': 0.92, 'top5': 1.0}
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from netslim.errors import DataNotFoundError

MIN_SIDE = 0.35  # smallest crop, as a share of the photo's short edge


def sample_photos() -> list[torch.Tensor]:
    """scikit-learn's two sample photos as (3, H, W) float tensors in [0, 255].

    Raises:
        DataNotFoundError: if scikit-learn is not installed.
    """
    if importlib.util.find_spec("sklearn") is None:
        raise DataNotFoundError("the natural test images are scikit-learn's sample photos: pip install scikit-learn")
    from sklearn.datasets import load_sample_images  # noqa: PLC0415

    return [torch.tensor(img).permute(2, 0, 1).float() for img in load_sample_images().images]


def photo_crops(count: int = 64, size: int = 224, seed: int = 0) -> torch.Tensor:
    """``count`` deterministic crops (count, 3, size, size) of the sample photos, pixels in [0, 255]."""
    photos = sample_photos()
    gen = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        height, width = photo.shape[1:]
        side = int(min(height, width) * (MIN_SIDE + (1 - MIN_SIDE) * torch.rand((), generator=gen)))
        top = int(torch.randint(0, height - side + 1, (), generator=gen))
        left = int(torch.randint(0, width - side + 1, (), generator=gen))
        crop = photo[:, top : top + side, left : left + side]
        if torch.rand((), generator=gen) < 0.5:
            crop = crop.flip(-1)
        crops.append(F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(crops).clamp(0, 255)


def agreement(dense_logits: torch.Tensor, logits: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 agreement of ``logits`` (N, classes) with ``dense_logits`` as labels."""
    labels = dense_logits.argmax(-1)  # (N,)
    top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (N, 5)
    return {
        "top1": float((logits.argmax(-1) == labels).float().mean()),
        "top5": float((top5 == labels[:, None]).any(-1).float().mean()),
    }


def mean_kl(dense_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over inputs of KL(dense || compressed) of the softmax class distributions, in nats."""
    return float(F.kl_div(logits.log_softmax(-1), dense_logits.log_softmax(-1), log_target=True, reduction="batchmean"))
