"""Real data: a small CNN trained on a Fashion-MNIST subset with GMP reaches its sparsity and learns."""

import importlib.util
from pathlib import Path

import pytest
import torch

from netslim.data.fashion_mnist import DEBIAN_FOLDER, load_fashion_mnist
from netslim.training import GMPConfig, make_callback
from netslim.training.loop import accuracy, fit

EXAMPLE = Path(__file__).parents[2] / "examples" / "fashion_mnist.py"


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_FOLDER.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_gmp_during_training_reaches_80_percent_and_keeps_accuracy():
    spec = importlib.util.spec_from_file_location("fashion_mnist_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, test = load_fashion_mnist("train", 12_800), load_fashion_mnist("test", 2_000)
        model = example.build_cnn()
        cfg = GMPConfig(final_sparsity=0.8, begin_step=20, end_step=120, frequency=10, ignore=("0", "14"))
        result = fit(model, train.images, train.labels, epochs=1.5, lr=2e-3, callback=make_callback(model, cfg))
    finally:
        torch.set_num_threads(threads)
    assert result["sparsity"]["sparsity"] == pytest.approx(0.8, abs=0.005)
    for name in result["sparsity"]["layers"]:
        weight = model.get_submodule(name).weight
        assert float((weight == 0).float().mean()) >= 0.8 - 0.01, name
    assert accuracy(model, test.images, test.labels) > 0.80
