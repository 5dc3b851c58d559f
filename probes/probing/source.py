"""Reading probe sets out of an activation store: one site kind, one position, all layers.

This module is the only place the probes touch the store, through its public read API
(:class:`activations.store.ActivationStore`): ``sites``, ``keys`` (problem ids), ``labels``
(position labels ``prompt_end``, ``step:j``) and ``site(name)[rows]`` (memory-mapped rows).
Any object with those four members works (:class:`ArrayStore` holds arrays in memory, for
synthetic data and tests).

Example::

    >>> from activations.store import ActivationStore                       # doctest: +SKIP
    >>> ps = read_probe_set(ActivationStore("runs/x/cache/pre"), "hook_resid_post")
    >>> ps.X.shape                                                            # [layers, rows, d]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from probes.probing.splits import chain_of

_SITE = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass
class ProbeSet:
    """Activations of one site kind at one position, every layer, aligned to problem rows.

    Attributes:
        X: ``[L, n, d]`` float32 activations (layer-major).
        layers: the ``L`` layer indices.
        hook: the block hook name (``hook_resid_post``).
        keys: ``[n]`` problem ids; positions: ``[n]`` position labels (``prompt_end``, ``step:j``).
        groups: ``[n]`` chain ids (:func:`probes.probing.splits.chain_of`) for grouped splits;
            a key that is not a problem id is its own group (so stores whose row keys are not
            problem ids lose the twin grouping).
    """

    X: np.ndarray
    layers: list[int]
    hook: str
    keys: list[str]
    positions: list[str]
    groups: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.keys)

    def site(self, layer: int) -> str:
        return f"blocks.{layer}.{self.hook}"


class ArrayStore:
    """An in-memory stand-in for :class:`activations.store.ActivationStore`'s read API.

    Args:
        sites: site name -> ``[n, d]`` array (the same rows for every site).
        keys: ``[n]`` problem ids; labels: ``[n]`` position labels (default all ``prompt_end``).
    """

    def __init__(self, sites: Mapping[str, np.ndarray], keys: Sequence[str], labels: Sequence[str] | None = None):
        self._data = {k: np.asarray(v, dtype=np.float32) for k, v in sites.items()}
        self.sites = list(self._data)
        self.keys = list(keys)
        self.labels = list(labels) if labels is not None else ["prompt_end"] * len(self.keys)
        for k, v in self._data.items():
            if v.shape[0] != len(self.keys):
                raise ValueError(f"site {k} has {v.shape[0]} rows for {len(self.keys)} keys")

    def site(self, name: str):
        if name not in self._data:
            raise KeyError(f"no site {name!r}; sites: {self.sites}")
        return torch.from_numpy(self._data[name])


def open_store(path: str | Path):
    """Open the activation store at ``path`` (:class:`activations.store.ActivationStore`).

    Raises:
        activations.store.StoreError: no finished store there.
    """
    from activations.store import ActivationStore

    return ActivationStore(path)


def store_layers(store, hook: str) -> list[int]:
    """Layers of ``store`` that have the block hook ``hook``, ascending."""
    out = []
    for s in store.sites:
        m = _SITE.match(s)
        if m and m.group(2) == hook:
            out.append(int(m.group(1)))
    return sorted(out)


def read_probe_set(store, hook: str = "hook_resid_post", position: str = "prompt_end",
                   layers: Sequence[int] | None = None, rows: np.ndarray | None = None,
                   progress: bool = False) -> ProbeSet:
    """Read ``[L, n, d]`` activations of ``blocks.{l}.{hook}`` at one position kind.

    Args:
        store: an :class:`~activations.store.ActivationStore` (or :class:`ArrayStore`).
        hook: block hook name, e.g. ``hook_resid_post``, ``hook_attn_out``, ``hook_mlp_out``
            (per-head ``attn.hook_z`` is flattened to ``n_heads * d_head``).
        position: ``prompt_end`` (rows labelled so) or ``step`` (every ``step:j`` row).
        layers: layers to read (default every layer the store has for ``hook``).
        rows: explicit row indices instead of ``position``.
        progress: a tqdm bar over layers.

    Raises:
        KeyError: the store has no site for ``hook`` (the message lists its sites).
        ValueError: no rows at ``position``.
    """
    all_layers = store_layers(store, hook)
    if not all_layers:
        raise KeyError(f"the store has no blocks.*.{hook} site; it has {list(store.sites)[:6]}...")
    layers = list(all_layers if layers is None else layers)
    missing = sorted(set(layers) - set(all_layers))
    if missing:
        raise KeyError(f"the store has no blocks.{missing[0]}.{hook}; layers with it: {all_layers}")
    labels = list(store.labels)
    if rows is None:
        if position == "step":
            rows = np.array([i for i, lab in enumerate(labels) if str(lab).startswith("step:")], dtype=np.int64)
        else:
            rows = np.array([i for i, lab in enumerate(labels) if lab == position], dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise ValueError(f"the store has no rows at position {position!r} (labels: {sorted(set(labels))[:5]})")
    keys = [store.keys[i] for i in rows]
    first = store.site(f"blocks.{layers[0]}.{hook}")[rows]
    d = int(np.prod(first.shape[1:]))
    X = np.empty((len(layers), rows.size, d), dtype=np.float32)
    for j, layer in enumerate(tqdm(layers, desc=f"reading {hook}", disable=not progress, leave=False)):
        t = first if j == 0 else store.site(f"blocks.{layer}.{hook}")[rows]
        X[j] = t.reshape(rows.size, d).float().numpy()
    groups = np.array([_group_of(k) for k in keys])
    return ProbeSet(X=X, layers=layers, hook=hook, keys=keys, positions=[labels[i] for i in rows], groups=groups)


def _group_of(key: str) -> str:
    try:
        return chain_of(key)
    except ValueError:
        return str(key)
