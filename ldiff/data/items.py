"""``IndexedFields``: the items a reconstruction run visits, each with a stable index."""

from __future__ import annotations

from torch import Tensor
from torch.utils.data import Dataset


class IndexedFields(Dataset):
    """Fields (and optional condition channels) as items ``{"x", "index"[, "cond"], ...}``.

    The index is the item's position in ``fields``; writers sort and de-duplicate by it,
    and observation noise is seeded by it, so results do not depend on batching.

    Args:
        fields: (N, C, H, W) in normalised units.
        cond: (N, C_cond, H, W) or None.
        extra: per-item values carried along, each (N,) (the store's ``trajectory`` and
            the ``time`` of a window's first frame), which the writer keeps as coordinates.
    """

    def __init__(self, fields: Tensor, cond: Tensor | None = None, extra: dict[str, Tensor] | None = None):
        extra = dict(extra or {})
        for name, value in {"cond": cond, **extra}.items():
            if value is not None and value.shape[0] != fields.shape[0]:
                raise ValueError(f"IndexedFields: {fields.shape[0]} fields but {value.shape[0]} {name} items")
        self.fields = fields
        self.cond = cond
        self.extra = extra

    def __len__(self) -> int:
        return self.fields.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        item = {"x": self.fields[index], "index": index}
        if self.cond is not None:
            item["cond"] = self.cond[index]
        item.update({name: value[index] for name, value in self.extra.items()})
        return item
