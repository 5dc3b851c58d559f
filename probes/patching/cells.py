"""Cells: one patch configuration of a sweep (which sites, at which token positions).

A sweep (:mod:`probes.patching.sweep`) scores many cells; each cell writes the donor's values at
its sites and positions into the recipient's forward pass. Positions are named per input, so
one cell means the same thing for every problem of a batch:

==============  ==============================================================================
positions       the tokens patched in each input (indices within the unpadded input)
==============  ==============================================================================
``prompt``      every prompt token, ``0 .. prompt_end`` (routing: what the model has read)
``prompt_end``  the last prompt token (it predicts the strategy word)
``response``    every token of the teacher-forced response (execution: the trace)
``steps``       the ``=`` token of each step (:func:`probes.task.traces.step_positions`)
``all``         every token
``p`` (int)     token ``p`` of each input (layer x position heatmaps; inputs shorter than
                ``p + 1`` tokens are left unpatched)
==============  ==============================================================================

Example::

    >>> layer_cells(["hook_resid_post"], n_layers=2, positions="prompt")
    [Cell(sites=('blocks.0.hook_resid_post',), positions='prompt'), Cell(sites=('blocks.1.hook_resid_post',), positions='prompt')]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

from activations.batch import PositionError, TokenBatch
from activations.positions import GROUPS, group_positions
from activations.sites import BLOCK_HOOKS, parse_site

POSITION_GROUPS: tuple[str, ...] = GROUPS
"""Named position groups a cell can patch (or an int token index): :data:`activations.positions.GROUPS`."""

Positions = Union[str, int]


class CellError(ValueError):
    """A cell that cannot be resolved against a batch; the message names the input and the fix."""


@dataclass(frozen=True)
class Cell:
    """One patch configuration.

    Attributes:
        sites: canonical site names patched together (``("blocks.2.hook_mlp_out",)``).
        positions: a group of :data:`POSITION_GROUPS` or a token index (see the module table).
    """

    sites: tuple[str, ...]
    positions: Positions

    def __post_init__(self) -> None:
        if not self.sites:
            raise CellError("a cell needs at least one site")
        check_positions(self.positions)

    @property
    def label(self) -> str:
        return f"{'+'.join(self.sites)}@{self.positions}"


def check_positions(positions: Positions) -> Positions:
    """Validate a cell's positions.

    Raises:
        CellError: an unknown group name or a negative index (the message lists the groups).
    """
    if isinstance(positions, bool) or not isinstance(positions, (str, int)):
        raise CellError(f"positions must be a name or a token index, got {positions!r}")
    if isinstance(positions, int):
        if positions < 0:
            raise CellError(f"token index {positions} is negative: use 0 .. length - 1")
        return positions
    if positions not in POSITION_GROUPS:
        raise CellError(f"unknown positions {positions!r}: use one of {list(POSITION_GROUPS)} or a token index")
    return positions


def resolve_cell_positions(positions: Positions, batch: TokenBatch) -> tuple[list[int], list[int]]:
    """The ``(row, position within the unpadded input)`` pairs a cell patches in ``batch``.

    Raises:
        CellError: ``response`` or ``steps`` on an input without a teacher-forced response.
    """
    check_positions(positions)
    rows: list[int] = []
    pos: list[int] = []
    lengths = batch.lengths.tolist()
    for b in range(len(batch)):
        if isinstance(positions, int):
            ps = [positions] if positions < lengths[b] else []
        else:
            try:
                ps = group_positions(positions, batch, b)
            except PositionError as e:
                raise CellError(str(e)) from None
        rows += [b] * len(ps)
        pos += ps
    return rows, pos


def layer_cells(hooks: Sequence[str], n_layers: int, positions: Positions) -> list[Cell]:
    """One cell per hook and layer (hook-major, layers in order), all at ``positions``.

    Args:
        hooks: block hooks such as ``"hook_resid_post"`` or ``"hook_mlp_out"``.

    Raises:
        CellError: an unknown hook (the message lists them) or bad positions.
    """
    out = []
    for h in hooks:
        if h not in BLOCK_HOOKS:
            raise CellError(f"unknown block hook {h!r}: use one of {list(BLOCK_HOOKS)}")
        out += [Cell((parse_site(f"blocks.{l}.{h}", n_layers).name,), positions) for l in range(n_layers)]
    return out


def grid_cells(hooks: Sequence[str], n_layers: int, n_positions: int) -> list[Cell]:
    """One cell per hook, layer and token index ``0 .. n_positions - 1`` (hook, layer, position
    order): the cells of a layer x position heatmap.

    Raises:
        CellError: an unknown hook.
    """
    out = []
    for c in layer_cells(hooks, n_layers, 0):
        out += [Cell(c.sites, p) for p in range(n_positions)]
    return out
