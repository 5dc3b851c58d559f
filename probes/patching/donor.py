"""Donor activations: the values a patch writes, read once from the donor's forward pass.

The donor is another model on the same inputs (cross-model patching, CMAP) or the same model on
counterfactual inputs (the clean prompt of a pair). Its activations are read in full (every
token) in one forward pass per batch, and a patch at ``(row, position)`` takes the donor's value
at the same row and the same position *within the unpadded input*, so donor and recipient
batches may be padded differently.

Example::

    >>> donor = Donor.read(post_backend, batch, ["blocks.*.hook_resid_post"])   # doctest: +SKIP
    >>> donor.values("blocks.1.hook_resid_post", rows=[0, 0], positions=[3, 4]).shape  # doctest: +SKIP
    torch.Size([2, 256])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from activations.batch import TokenBatch


class DonorError(ValueError):
    """Donor activations that cannot serve a patch (a missing site or an out-of-range token)."""


@dataclass
class Donor:
    """Activations of the donor run, in full.

    Attributes:
        batch: the donor's inputs (``N`` rows, in the recipient batch's row order).
        activations: per canonical site name, ``Float[Tensor, "N pos *site_shape"]``.
    """

    batch: TokenBatch
    activations: dict[str, Tensor]

    @classmethod
    def read(cls, backend: Any, batch: TokenBatch, sites: Sequence[str]) -> "Donor":
        """Read ``sites`` (names or ``blocks.*.`` patterns) in full from one forward pass.

        Raises:
            SiteError: an unknown site (from the backend).
        """
        return cls(batch=batch, activations=dict(backend.read(batch, list(sites))))

    def values(self, site: str, rows: Sequence[int] | Tensor, positions: Sequence[int] | Tensor) -> Float[Tensor, "n *site_shape"]:
        """The donor's values at ``(row, position within the unpadded input)`` pairs.

        Raises:
            DonorError: the site was not read, or a position is outside the donor's input.
        """
        if site not in self.activations:
            raise DonorError(f"the donor run did not read {site!r}; read it with Donor.read(..., sites=[...])")
        r = torch.as_tensor(rows, dtype=torch.long)
        p = torch.as_tensor(positions, dtype=torch.long)
        if len(r) and bool((p >= self.batch.lengths[r]).any()):
            i = int((p >= self.batch.lengths[r]).nonzero()[0])
            raise DonorError(
                f"{self.batch.keys[int(r[i])]}: position {int(p[i])} is outside the donor's input of "
                f"{int(self.batch.lengths[r[i]])} tokens (donor and recipient inputs must align)"
            )
        cols = self.batch.pad_offset[r] + p
        act = self.activations[site]
        return act[r.to(act.device), cols.to(act.device)]
