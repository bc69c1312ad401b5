"""``IndexedFields``: the items a reconstruction run visits, each with a stable index."""

from __future__ import annotations

from torch import Tensor
from torch.utils.data import Dataset


class IndexedFields(Dataset):
    """Fields (and optional condition channels) as items ``{"x", "index"[, "cond"]}``.

    The index is the item's position in ``fields``; writers sort and de-duplicate by it,
    and observation noise is seeded by it, so results do not depend on batching.

    Args:
        fields: (N, C, H, W) in normalised units.
        cond: (N, C_cond, H, W) or None.
    """

    def __init__(self, fields: Tensor, cond: Tensor | None = None):
        if cond is not None and cond.shape[0] != fields.shape[0]:
            raise ValueError(f"IndexedFields: {fields.shape[0]} fields but {cond.shape[0]} condition items")
        self.fields = fields
        self.cond = cond

    def __len__(self) -> int:
        return self.fields.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        item = {"x": self.fields[index], "index": index}
        if self.cond is not None:
            item["cond"] = self.cond[index]
        return item
