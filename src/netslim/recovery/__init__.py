"""Recovery fine-tuning of compressed causal LMs (the ``recover`` stage).

:mod:`~netslim.recovery.adapters` (what trains, and how structure is kept),
:mod:`~netslim.recovery.teacher` (the cached top-k distillation loss) and
:mod:`~netslim.recovery.loop` (the resumable training loop). The stage itself is
:mod:`netslim.methods.recover`; data selection lives in :mod:`netslim.data.select`.
"""
