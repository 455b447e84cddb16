"""Channel slots: the atoms of the dependency graph.

Every channel of every activation gets a slot id. Two slots are *united* when removing one
forces removing the other (the two operands of a residual addition, a convolution's input
channel and the producer's output channel). A united set is one pruning *unit*; a unit is
*fixed* when it touches something whose width cannot change (a model output, an ignored layer,
an operation netslim does not understand).

Example:
    >>> table = SlotTable()
    >>> a, b = table.new(2)
    >>> table.union(a, b)
    >>> table.find(a) == table.find(b)
    True
"""

from __future__ import annotations

import torch

NONE = -1  # label of an element that belongs to no prunable channel (inputs, token dims)


class SlotTable:
    """Union-find over slot ids, with a *fixed* flag per set. Owns no global state."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._fixed: list[bool] = []

    def __len__(self) -> int:
        return len(self._parent)

    def new(self, count: int) -> torch.Tensor:
        """``count`` fresh slot ids as a long tensor."""
        start = len(self._parent)
        self._parent.extend(range(start, start + count))
        self._fixed.extend([False] * count)
        return torch.arange(start, start + count, dtype=torch.long)

    def find(self, slot: int) -> int:
        """The representative of ``slot``'s set (path halving)."""
        parent = self._parent
        while parent[slot] != slot:
            parent[slot] = parent[parent[slot]]
            slot = parent[slot]
        return slot

    def union(self, a: int, b: int) -> None:
        """Merge the sets of ``a`` and ``b``; ``NONE`` on either side is a no-op."""
        if a == NONE or b == NONE:
            return
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[rb] = ra
            self._fixed[ra] = self._fixed[ra] or self._fixed[rb]

    def union_pairs(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Union ``a[i]`` with ``b[i]`` for every element of two same-shape label tensors."""
        a, b = a.reshape(-1), b.reshape(-1)
        keep = (a != NONE) & (b != NONE) & (a != b)
        keys = torch.unique(a[keep] * (1 << 32) + b[keep])  # one sort of int64 keys, not of rows
        for key in keys.tolist():
            self.union(key >> 32, key & 0xFFFFFFFF)

    def fix(self, labels: torch.Tensor) -> None:
        """Mark every set that a label in ``labels`` belongs to as fixed."""
        for slot in torch.unique(labels).tolist():
            if slot != NONE:
                self._fixed[self.find(slot)] = True

    def is_fixed(self, slot: int) -> bool:
        """Whether ``slot``'s set is fixed."""
        return self._fixed[self.find(slot)]

    def roots(self, labels: torch.Tensor) -> torch.Tensor:
        """Representatives of each label (``NONE`` stays ``NONE``), same shape."""
        flat = [self.find(s) if s != NONE else NONE for s in labels.reshape(-1).tolist()]
        return torch.tensor(flat, dtype=torch.long).reshape(labels.shape)
