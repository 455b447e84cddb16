"""Where the decoder blocks' weights are while the engine passes over them.

The engine tells a :class:`Residency` when it reaches a block and when it is done with it; the
base class keeps every block in the model and does nothing. ``--offload``'s residency
(:mod:`netslim.offload`) reads a block from its checkpoint files on :meth:`load`, and on
:meth:`after` writes the compressed block out before :meth:`unload` frees it, so a pass holds
one block's weights at a time.
"""

from __future__ import annotations


class Residency:
    """Block weights that stay in the model (no-op hooks); subclasses move them in and out."""

    streams = False  # whether blocks leave memory between uses (then one layer-wise pass only)

    def load_embeddings(self, ids):
        """The embeddings are about to embed ``ids`` (capturing what enters block 0); returns
        the ids to feed the model instead (a residency may renumber them into the rows it read)."""
        return ids

    def unload_outside(self) -> None:
        """The capture is done; the tensors outside the blocks may leave memory until needed."""

    def load(self, index: int) -> None:
        """Block ``index`` is about to be used (a sweep or a pass); its weights must be in place."""

    def unload(self, index: int) -> None:
        """The sweep or pass is done with block ``index``."""

    def before(self, index: int) -> None:
        """The compressing pass is about to act on loaded block ``index``."""

    def after(self, index: int) -> None:
        """The compressing pass has compressed block ``index`` (its caches released)."""


IN_MEMORY = Residency()
