"""The backend interface: read and write activations at named sites, in one forward pass.

A backend runs a batch through a model once, and in that one forward pass it can

- **read** the activations at any list of sites, gathered at given token coordinates
  (a :class:`~activations.positions.PositionIndex`) or in full;
- **write** (patch) given tensors into sites at given coordinates (replacing the values there),
  for every row of the batch at once, so many patches cost one forward;
- return the logits, in full or gathered at coordinates.

Hooks live only for the duration of one :meth:`Backend.run` (context managers), so an error in
a run leaves the model clean. Reads see the forward *as patched*: a read at a site downstream of
a patch sees its effect, and a site that is both patched and read returns the patched values.

Writes at ``blocks.{l}.hook_resid_mid`` replace the residual stream itself (what the MLP reads
*and* what the skip connection carries), not only the MLP's input: every backend implements them
by setting ``hook_attn_out := value - resid_pre`` at the patched tokens, so that
``resid_pre + attn_out`` equals ``value`` up to the rounding of one subtraction and one addition
(about 1e-7 relative in fp32; every other write is exact).

Implementations: :class:`~activations.backends.nnsight_backend.NNsightBackend` (default) and
:class:`~activations.backends.bridge_backend.BridgeBackend` (TransformerLens ``TransformerBridge``).
Tests hold both and Hugging Face's ``output_hidden_states`` to the same numbers.

Example: cross-model patching of the residual stream at the end of the prompt (CMAP, Prakash et
al. 2024, arXiv 2402.14811), post-RL into pre-RL, for every prompt of the batch in one forward::

    pre, post = make_backend("nnsight", pre_ckpt), make_backend("nnsight", post_ckpt)
    batch = encode_batch(pre_ckpt.tokenizer, prompts)
    at = resolve_positions("prompt_end", batch)            # one row per prompt
    donor = post.read(batch, "blocks.*.hook_resid_post", at)   # {site: [n, d_model]}
    logits = pre.patch(batch, [Patch("blocks.3.hook_resid_post", donor["blocks.3.hook_resid_post"], at)],
                       logits=at)                          # [n, vocab] at the first response token
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from activations.batch import TokenBatch
from activations.dims import ModelDims
from activations.load import Checkpoint
from activations.positions import PositionIndex
from activations.sites import Site, expand_sites, in_forward_order, parse_site

log = logging.getLogger(__name__)


class PatchError(ValueError):
    """A patch that cannot be applied; the message names the site and the expected shape."""


@dataclass
class Patch:
    """Values to write into one site during a forward pass.

    Attributes:
        site: a canonical site name (``"blocks.3.hook_resid_post"``) or :class:`Site`.
        values: with ``at``: ``Float[Tensor, "n *site_shape"]`` (``[n, d_head]`` when ``head``
            is set), one row per coordinate of ``at``; without ``at``:
            ``Float[Tensor, "batch pos *site_shape"]``, the whole activation.
        at: the token coordinates to write, or None to replace the whole activation.
        head: for ``attn.hook_z`` only: write this one head (``values[..., d_head]``) and keep
            the other heads.
        add: add ``values`` to the activation instead of replacing it (steering: a vector added
            at some tokens, Turner et al. 2023, arXiv 2308.10248).
    """

    site: str | Site
    values: Tensor
    at: PositionIndex | None = None
    head: int | None = None
    add: bool = False


@dataclass
class RunResult:
    """What one forward pass returned.

    Attributes:
        activations: per site name read, ``Float[Tensor, "n *site_shape"]`` gathered at the
            run's coordinates, or ``Float[Tensor, "batch pos *site_shape"]`` when read in full;
            in the model's dtype, detached (unless the run kept gradients), on the model's device.
        logits: ``Float[Tensor, "batch pos vocab"]``, ``Float[Tensor, "n vocab"]`` when gathered,
            or None when not asked for.
        past_key_values: the pass's key/value cache (a ``transformers`` ``Cache``) when run with
            ``kv_cache=True``: later tokens decoded from it see the patched values of this pass.
    """

    activations: dict[str, Tensor] = field(default_factory=dict)
    logits: Tensor | None = None
    past_key_values: Any = None


@dataclass
class _Write:
    site: Site
    values: Tensor
    rows: Tensor | None
    cols: Tensor | None
    head: int | None
    add: bool = False

    def apply(self, old: Tensor) -> Tensor:
        """A copy of ``old`` (``[batch, pos, *shape]``) with the values written (or added)."""
        v = self.values.to(old.dtype)
        if self.rows is None and self.head is None:
            return old + v if self.add else v
        new = old.clone()
        idx = (slice(None), slice(None)) if self.rows is None else (self.rows, self.cols)
        if self.head is not None:
            idx = idx + (self.head,)
        new[idx] = new[idx] + v if self.add else v
        return new


@dataclass
class _Plan:
    reads: list[Site]
    writes: list[_Write]
    rows: Tensor | None
    cols: Tensor | None
    logits_at: PositionIndex | None
    logits: bool
    kv_cache: bool = False


def gather(value: Tensor, rows: Tensor | None, cols: Tensor | None) -> Tensor:
    """``value[rows, cols]`` (``[n, *rest]``), or ``value`` itself when ``rows`` is None."""
    if rows is None:
        return value
    return value[rows, cols]


class Backend(ABC):
    """Reads and writes activations at canonical sites of one checkpoint's model.

    Subclasses implement :meth:`_execute`; the public methods validate arguments, so every
    backend raises the same errors for the same mistakes.

    Attributes:
        checkpoint: the :class:`~activations.load.Checkpoint` it runs.
        dims: the model's :class:`~activations.dims.ModelDims`.
        name: the backend's registry name (``"nnsight"``, ``"bridge"``).
    """

    name: ClassVar[str] = "abstract"
    supports_kv_cache: ClassVar[bool] = False
    """Whether :meth:`run` can return the pass's key/value cache (``kv_cache=True``)."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.dims: ModelDims = checkpoint.dims
        self.device = checkpoint.device
        self.dtype = checkpoint.dtype

    # --- the interface -----------------------------------------------------------------

    def run(
        self,
        batch: TokenBatch,
        *,
        read: Sequence[str | Site] = (),
        at: PositionIndex | None = None,
        patches: Sequence[Patch] = (),
        logits: bool | PositionIndex = False,
        grad: bool = False,
        kv_cache: bool = False,
    ) -> RunResult:
        """One forward pass of ``batch`` that writes ``patches``, reads ``read`` and returns logits.

        Args:
            batch: the padded inputs (:func:`~activations.batch.encode_batch`).
            read: site names to read (patterns such as ``blocks.*.hook_resid_post`` allowed).
            at: the coordinates to gather reads at (``[n]`` rows), or None to return each read
                in full (``[batch, pos, *site_shape]``).
            patches: values to write during the pass (see :class:`Patch`).
            logits: True for the full logits, a :class:`PositionIndex` to gather them
                (``[n, vocab]``), False for none (the pass may then stop after the last read).
            grad: keep the autograd graph (for gradients with respect to patched values);
                otherwise the pass runs under ``torch.no_grad()``.
            kv_cache: also return the pass's key/value cache (:attr:`RunResult.past_key_values`;
                backends with :attr:`supports_kv_cache` only), so that generation can continue
                from a patched prefill (:func:`activations.generation.generate_greedy`).

        Returns:
            A :class:`RunResult`.

        Raises:
            SiteError: an unknown site or a layer out of range.
            PatchError: patch values of the wrong shape, or coordinates outside the batch.
            NotImplementedError: ``kv_cache`` on a backend without :attr:`supports_kv_cache`.
        """
        if kv_cache and not self.supports_kv_cache:
            raise NotImplementedError(f"the {self.name} backend cannot return a key/value cache; use the nnsight backend")
        plan = self._plan(batch, read, at, patches, logits)
        plan.kv_cache = kv_cache
        if not plan.reads and not plan.logits:
            return RunResult()
        # no_grad rather than inference_mode: results stay ordinary tensors that callers may use
        # in autograd later (e.g. as the initial values of a learned patch)
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            return self._execute(batch, plan)

    def read(
        self, batch: TokenBatch, sites: Sequence[str | Site] | str, at: PositionIndex | None = None
    ) -> dict[str, Tensor]:
        """Activations at ``sites``, gathered at ``at`` (``[n, *site_shape]`` each) or in full
        (``[batch, pos, *site_shape]``), from one forward pass. Raises as :meth:`run`."""
        sites = [sites] if isinstance(sites, (str, Site)) else sites
        return self.run(batch, read=sites, at=at).activations

    def patch(
        self, batch: TokenBatch, patches: Sequence[Patch], logits: bool | PositionIndex = True
    ) -> Tensor:
        """Logits of one forward pass with ``patches`` written: ``[batch, pos, vocab]``, or
        ``[n, vocab]`` gathered at a :class:`PositionIndex`. Raises as :meth:`run`."""
        if logits is False:
            raise ValueError("patch() returns logits: pass logits=True or a PositionIndex")
        out = self.run(batch, patches=patches, logits=logits).logits
        assert out is not None
        return out

    def close(self) -> None:
        """Release what the backend holds (hooks are never left installed between runs)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- for subclasses --------------------------------------------------------------------

    @abstractmethod
    def _execute(self, batch: TokenBatch, plan: _Plan) -> RunResult:
        """Run the validated plan in one forward pass (inside the grad/inference context)."""

    def _plan(self, batch, read, at, patches, logits) -> _Plan:
        n_layers = self.dims.n_layers
        names = [s.name if isinstance(s, Site) else s for s in read]
        reads = in_forward_order(expand_sites(names, n_layers), n_layers) if names else []
        rows = cols = None
        if at is not None:
            rows, cols = self._check_coords(batch, at, "read coordinates")
        writes = [self._check_patch(batch, p) for p in patches]
        logits_at = logits if isinstance(logits, PositionIndex) else None
        if logits_at is not None:
            self._check_coords(batch, logits_at, "logit coordinates")
        return _Plan(reads=reads, writes=writes, rows=rows, cols=cols, logits_at=logits_at,
                     logits=bool(logits is True or logits_at is not None))

    def _check_coords(self, batch: TokenBatch, at: PositionIndex, what: str) -> tuple[Tensor, Tensor]:
        rows, cols = at.rows.to(self.device), at.cols.to(self.device)
        if len(at) and (int(at.rows.min()) < 0 or int(at.rows.max()) >= len(batch)
                        or int(at.cols.min()) < 0 or int(at.cols.max()) >= batch.seq_len):
            raise PatchError(f"{what} fall outside the batch of shape {tuple(batch.input_ids.shape)}")
        return rows, cols

    def _check_patch(self, batch: TokenBatch, patch: Patch) -> _Write:
        site = patch.site if isinstance(patch.site, Site) else parse_site(patch.site, self.dims.n_layers)
        shape = site.shape(self.dims)
        if patch.head is not None:
            if site.hook != "attn.hook_z":
                raise PatchError(f"{site.name}: head= is only meaningful for attn.hook_z sites")
            if not 0 <= patch.head < self.dims.n_heads:
                raise PatchError(f"{site.name}: head {patch.head} is out of range (0..{self.dims.n_heads - 1})")
            shape = shape[1:]
        if patch.at is None:
            expected = (len(batch), batch.seq_len, *shape)
            rows = cols = None
        else:
            expected = (len(patch.at), *shape)
            rows, cols = self._check_coords(batch, patch.at, f"{site.name} patch coordinates")
        if tuple(patch.values.shape) != expected:
            raise PatchError(
                f"{site.name}: patch values have shape {tuple(patch.values.shape)}, expected "
                f"{expected} ({'n coordinates' if patch.at is not None else 'batch, pos'}, "
                f"{'d_head' if patch.head is not None else 'site shape ' + str(shape)})"
            )
        return _Write(site=site, values=patch.values.to(self.device), rows=rows, cols=cols,
                      head=patch.head, add=patch.add)


def normalize_rms(x: Float[Tensor, "... d_model"], eps: float) -> Float[Tensor, "... d_model"]:
    """``x / rms(x)`` computed as Hugging Face's RMSNorm does (in float32, ``x * rsqrt(mean(x^2)
    + eps)``), cast back to ``x``'s dtype: TransformerLens' ``hook_normalized``."""
    xf = x.to(torch.float32)
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
