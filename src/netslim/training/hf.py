"""A thin ``transformers.TrainerCallback`` around any :class:`SparsityCallback`.

Importing this module imports ``transformers``; ``netslim.training`` itself does not.

Recipe::

    from netslim.training import GMPConfig, make_callback
    from netslim.training.hf import TrainerSparsity

    sparsity = make_callback(model, GMPConfig(final_sparsity=0.5, end_step=500, frequency=50))
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[TrainerSparsity(sparsity)])
    trainer.train()
    sparsity.report()
"""

from __future__ import annotations

from transformers import TrainerCallback

from netslim.training.callbacks import SparsityCallback


class TrainerSparsity(TrainerCallback):
    """Forwards the Trainer's begin / step-end / end events to a :class:`SparsityCallback`.

    The Trainer counts ``state.global_step`` from 1 after the first optimizer step; the
    sparsity callback counts steps from 0, hence ``global_step - 1``.
    """

    def __init__(self, sparsity: SparsityCallback):
        self.sparsity = sparsity

    def on_train_begin(self, args, state, control, **kwargs):
        self.sparsity.on_train_begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.sparsity.on_step_end(state.global_step - 1)

    def on_train_end(self, args, state, control, **kwargs):
        self.sparsity.on_train_end()
