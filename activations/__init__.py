"""Everything that touches a model's insides (README.md, "The packages").

- :mod:`~activations.load`: checkpoints (model, tokenizer, dtype, device) and their hashes;
  :mod:`~activations.pair`: the check that a pre-RL / post-RL pair can be compared and patched.
- :mod:`~activations.sites`: canonical TransformerLens site names (``blocks.{l}.hook_resid_post``...).
- :mod:`~activations.batch` and :mod:`~activations.positions`: padded batches and named token
  positions (``prompt_end``, ``steps``, ``all``, indices), correct under either padding side.
- :mod:`~activations.backends`: read and write activations at sites in one forward pass
  (nnsight by default, or the TransformerLens ``TransformerBridge``).
- :mod:`~activations.store` and :mod:`~activations.cache`: the chunked, hashed, resumable disk
  store and ``python -m activations.cache``.
"""

from activations.backends import BACKENDS, Backend, Patch, PatchError, RunResult, make_backend
from activations.batch import PositionError, TokenBatch, encode_batch
from activations.dims import ModelDims
from activations.load import Checkpoint, CheckpointError, load_checkpoint
from activations.pair import PairMismatchError, check_pair
from activations.positions import PositionIndex, parse_positions, resolve_positions
from activations.sites import LayerOutOfRangeError, Site, SiteError, UnknownSiteError, expand_sites, parse_site
from activations.store import ActivationStore, CorruptChunkError, StoreError, StoreMismatchError, align_rows

_CACHE_NAMES = ("CacheRecord", "cache_activations", "read_records")


def __getattr__(name: str):
    # activations.cache is also the CLI (python -m activations.cache): importing it here, eagerly,
    # would import it twice under runpy, so its names are loaded on first use.
    if name in _CACHE_NAMES:
        from activations import cache

        return getattr(cache, name)
    raise AttributeError(f"module 'activations' has no attribute {name!r}")


__all__ = [
    "BACKENDS", "Backend", "Patch", "PatchError", "RunResult", "make_backend",
    "PositionError", "TokenBatch", "encode_batch",
    "CacheRecord", "cache_activations", "read_records",
    "ModelDims",
    "Checkpoint", "CheckpointError", "load_checkpoint",
    "PairMismatchError", "check_pair",
    "PositionIndex", "parse_positions", "resolve_positions",
    "LayerOutOfRangeError", "Site", "SiteError", "UnknownSiteError", "expand_sites", "parse_site",
    "ActivationStore", "CorruptChunkError", "StoreError", "StoreMismatchError", "align_rows",
]
