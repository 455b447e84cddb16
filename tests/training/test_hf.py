"""The transformers.Trainer adapter drives the same callback: the target sparsity is reached."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netslim.training import GMPConfig, make_callback

transformers = pytest.importorskip("transformers")


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x, labels=None):
        logits = self.body(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def test_trainer_adapter_reaches_target_and_keeps_masks(tmp_path):
    from netslim.training.hf import TrainerSparsity

    torch.manual_seed(0)
    data = [{"x": torch.randn(8), "labels": torch.tensor(i % 2)} for i in range(64)]
    model = Classifier()
    sparsity = make_callback(model, GMPConfig(final_sparsity=0.75, begin_step=1, end_step=8, frequency=2))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=8, learning_rate=1e-2,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[TrainerSparsity(sparsity)])
    trainer.train()
    for name, mask in sparsity.masks.items():
        assert int((~mask).sum()) == int(mask.numel() * 0.75)
        weight = model.get_submodule(name).weight
        assert (weight[~mask] == 0).all()
    assert not sparsity._handles  # on_train_end removed the gradient hooks
