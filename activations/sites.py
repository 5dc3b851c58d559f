"""Activation sites, named by their TransformerLens hook names.

TransformerLens names are canonical here (README.md, "The packages"); every backend maps
them to its own. The sites, in the order a forward pass reaches them:

=====================================  ======================  ==============================
site                                   shape of one token       what it is (Qwen2 / Llama)
=====================================  ======================  ==============================
``hook_embed``                         ``[d_model]``            token embeddings
``blocks.{l}.hook_resid_pre``          ``[d_model]``            residual stream entering block l
``blocks.{l}.attn.hook_z``             ``[n_heads, d_head]``    per-head attention result
                                                                (input of ``o_proj``)
``blocks.{l}.hook_attn_out``           ``[d_model]``            attention output (``o_proj``)
``blocks.{l}.hook_resid_mid``          ``[d_model]``            ``resid_pre + attn_out``
``blocks.{l}.hook_mlp_out``            ``[d_model]``            MLP output
``blocks.{l}.hook_resid_post``         ``[d_model]``            ``resid_mid + mlp_out``, the
                                                                output of block l
``ln_final.hook_normalized``           ``[d_model]``            final RMSNorm *before* its
                                                                weight: ``x / rms(x)``
=====================================  ======================  ==============================

``blocks.{L-1}.hook_resid_post`` is the output of the last block *before* the final norm; Hugging
Face's ``output_hidden_states[L]`` is *after* it (``model.norm(resid_post[L-1])``), so
``hidden_states[l + 1] == resid_post[l]`` only for ``l < L - 1``, and
``hidden_states[L] == ln_final.weight * ln_final.hook_normalized``. ``ln_final.hook_normalized``
follows TransformerLens, which hooks the normalised value before the learned scale.

Example::

    >>> from activations.sites import expand_sites
    >>> [s.name for s in expand_sites(["blocks.*.hook_resid_post"], n_layers=2)]
    ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from activations.dims import ModelDims

BLOCK_HOOKS: tuple[str, ...] = (
    "hook_resid_pre",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_out",
    "hook_resid_post",
)
"""Hooks inside a block, in the order the forward pass reaches them."""
GLOBAL_HOOKS: tuple[str, ...] = ("hook_embed", "ln_final.hook_normalized")
"""Hooks outside the blocks (before the first, after the last)."""

BLOCK_SITE_RE = re.compile(r"^blocks\.(?P<layer>[^.]+)\.(?P<hook>.+)$")
"""``blocks.{layer}.{hook}`` with named groups ``layer`` and ``hook`` (the layer may be ``*`` or negative)."""


class SiteError(ValueError):
    """A site name that cannot be used; the message names it and says what would work."""


class UnknownSiteError(SiteError):
    """The name is not one of the canonical TransformerLens hook names."""


class LayerOutOfRangeError(SiteError):
    """The name asks for a block the model does not have."""


@dataclass(frozen=True, order=False)
class Site:
    """One activation site.

    Attributes:
        name: the canonical TransformerLens hook name, e.g. ``"blocks.3.hook_resid_post"``.
        hook: the hook without its block prefix, e.g. ``"hook_resid_post"`` or ``"attn.hook_z"``.
        layer: the block index, or None for ``hook_embed`` and ``ln_final.hook_normalized``.
    """

    name: str
    hook: str
    layer: int | None

    def shape(self, dims: ModelDims) -> tuple[int, ...]:
        """The shape of the activation at one token: ``(n_heads, d_head)`` for ``attn.hook_z``,
        ``(d_model,)`` otherwise."""
        if self.hook == "attn.hook_z":
            return (dims.n_heads, dims.d_head)
        return (dims.d_model,)

    def order(self, n_layers: int) -> tuple[int, int]:
        """A key that sorts sites in the order a forward pass reaches them."""
        if self.hook == "hook_embed":
            return (-1, 0)
        if self.hook == "ln_final.hook_normalized":
            return (n_layers, 0)
        assert self.layer is not None
        return (self.layer, BLOCK_HOOKS.index(self.hook))

    def __str__(self) -> str:
        return self.name


def known_site_names(n_layers: int | None = None) -> list[str]:
    """Every canonical site name (with ``{l}`` for the layer unless ``n_layers`` is given)."""
    layers: Iterable[str] = ["{l}"] if n_layers is None else [str(i) for i in range(n_layers)]
    names = ["hook_embed"]
    for layer in layers:
        names += [f"blocks.{layer}.{h}" for h in BLOCK_HOOKS]
    return names + ["ln_final.hook_normalized"]


def _unknown(name: str) -> UnknownSiteError:
    return UnknownSiteError(
        f"unknown site {name!r}: sites are TransformerLens hook names, one of "
        f"{', '.join(known_site_names())} (l = layer index, or * for every layer)"
    )


def parse_site(name: str, n_layers: int) -> Site:
    """Parse one canonical site name for a model with ``n_layers`` blocks.

    Negative layers count from the end (``blocks.-1.hook_resid_post`` is the last block) and are
    normalised to their non-negative index in the returned :class:`Site`.

    Raises:
        UnknownSiteError: the name is not a canonical hook name (the message lists them).
        LayerOutOfRangeError: the layer is not in ``[-n_layers, n_layers)``.
    """
    if not isinstance(name, str):
        raise UnknownSiteError(f"a site name must be a string, got {type(name).__name__}")
    name = name.strip()
    if name in GLOBAL_HOOKS:
        return Site(name=name, hook=name, layer=None)
    m = BLOCK_SITE_RE.match(name)
    if m is None or m.group("hook") not in BLOCK_HOOKS:
        raise _unknown(name)
    raw = m.group("layer")
    try:
        layer = int(raw)
    except ValueError:
        raise SiteError(
            f"site {name!r}: layer {raw!r} is not an integer (use 0..{n_layers - 1}, "
            "a negative index, or * in expand_sites)"
        ) from None
    if not -n_layers <= layer < n_layers:
        raise LayerOutOfRangeError(
            f"site {name!r}: layer {layer} is out of range; this model has {n_layers} "
            f"blocks (layers 0..{n_layers - 1})"
        )
    layer %= n_layers
    hook = m.group("hook")
    return Site(name=f"blocks.{layer}.{hook}", hook=hook, layer=layer)


def expand_sites(patterns: str | Sequence[str], n_layers: int) -> list[Site]:
    """Parse site names and patterns into a list of sites, duplicates removed, order kept.

    A pattern may use ``*`` for the layer (``blocks.*.hook_resid_post`` is every block) and a
    string may hold several names separated by commas or spaces.

    Raises:
        UnknownSiteError / LayerOutOfRangeError / SiteError: as :func:`parse_site`.
        ValueError: no site was given.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    names: list[str] = []
    for p in patterns:
        names += [n for n in re.split(r"[,\s]+", str(p)) if n]
    if not names:
        raise ValueError("no sites given: name at least one, e.g. blocks.*.hook_resid_post")
    out: list[Site] = []
    seen: set[str] = set()
    for n in names:
        m = BLOCK_SITE_RE.match(n)
        if m is not None and m.group("layer") == "*":
            if m.group("hook") not in BLOCK_HOOKS:
                raise _unknown(n)
            sites = [parse_site(f"blocks.{i}.{m.group('hook')}", n_layers) for i in range(n_layers)]
        else:
            sites = [parse_site(n, n_layers)]
        for s in sites:
            if s.name not in seen:
                seen.add(s.name)
                out.append(s)
    return out


def in_forward_order(sites: Iterable[Site], n_layers: int) -> list[Site]:
    """``sites`` sorted in the order a forward pass reaches them (stable for ties)."""
    return sorted(sites, key=lambda s: s.order(n_layers))
