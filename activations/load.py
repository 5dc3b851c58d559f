"""Loading checkpoints: a causal LM with its tokenizer, dtype and device, and their hashes.

A checkpoint is a local Hugging Face directory (``config.json``, weights, tokenizer files) or a
Hub id where the Hub is reachable (or already in the local cache). ``trust_remote_code`` is
always off: only architectures that ``transformers`` ships are loaded.

Example::

    >>> from activations.load import load_checkpoint
    >>> ckpt = load_checkpoint("organisms/fb-sft", dtype="float32", device="cpu")  # doctest: +SKIP
    >>> ckpt.dims.n_layers, ckpt.weight_hash[:12]                                 # doctest: +SKIP
    (4, '3f2a9c0d1b7e')
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from activations.dims import ModelDims

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}
"""Accepted dtype names and the torch dtype each means."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the problem and the fix."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from a name (``"float32"``, ``"bf16"``, ...) or a ``torch.dtype``.

    Raises:
        ValueError: an unknown name (the message lists the accepted ones).
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}: use one of {sorted(set(DTYPES))}")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(DTYPES)}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """The canonical name of a torch dtype (``torch.float32`` -> ``"float32"``)."""
    return str(dtype).removeprefix("torch.")


def weight_hash(model: torch.nn.Module) -> str:
    """SHA-256 over a model's ``state_dict``: each entry's name, dtype, shape and raw bytes,
    in name order.

    The hash identifies the weights *as loaded* (so the same checkpoint loaded in another dtype
    hashes differently; manifests record the dtype next to it). Tied weights appear under each
    of their names. Cost: one pass over the weights (about 1 s per GB).
    """
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        t = state[name].detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        h.update(f"{name}|{dtype_name(t.dtype)}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).reshape(-1).numpy().data if t.numel() else b"")
    return h.hexdigest()


def tokenizer_spec(tokenizer: Any) -> dict[str, Any]:
    """The parts of a tokenizer that decide how text becomes ids, as a JSON-able dict.

    For a fast tokenizer: its ``tokenizer.json`` (model, vocabulary, merges, normalizer,
    pre-tokenizer, post-processor, added tokens) without the runtime ``padding`` and
    ``truncation`` settings, plus the special tokens. Used by :func:`tokenizer_hash` and by the
    pair check, which reports the first key that differs.
    """
    spec: dict[str, Any] = {}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
    else:  # a slow tokenizer: the vocabulary is what can be compared
        spec["vocab"] = dict(sorted(tokenizer.get_vocab().items()))
    spec["special_tokens"] = {
        k: getattr(tokenizer, f"{k}_token_id", None) for k in ("pad", "bos", "eos", "unk")
    }
    return spec


def tokenizer_hash(tokenizer: Any) -> str:
    """SHA-256 of :func:`tokenizer_spec` (canonical JSON): equal hashes tokenize text equally."""
    blob = json.dumps(tokenizer_spec(tokenizer), sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(eq=False)
class Checkpoint:
    """A loaded causal LM, its tokenizer, and where they came from.

    Attributes:
        model: the ``transformers`` ``*ForCausalLM`` in eval mode on ``device`` in ``dtype``.
        tokenizer: a fast tokenizer (offset mappings are needed to locate positions).
        source: the directory or Hub id it was loaded from (``"<memory>"`` if built in memory).
        dtype, device: where the weights live.
        load_kwargs: the keyword arguments :func:`load_checkpoint` was called with, so that an
            independent copy can be loaded again (:meth:`fresh_model`).
    """

    model: Any
    tokenizer: Any
    source: str = "<memory>"
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    load_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Any:
        return self.model.config

    @cached_property
    def dims(self) -> ModelDims:
        """The model's dimensions (layers, widths, heads)."""
        return ModelDims.from_config(self.model.config)

    @cached_property
    def weight_hash(self) -> str:
        """:func:`weight_hash` of the model, computed once (one pass over the weights)."""
        return weight_hash(self.model)

    @cached_property
    def tokenizer_hash(self) -> str:
        """:func:`tokenizer_hash` of the tokenizer."""
        return tokenizer_hash(self.tokenizer)

    @property
    def architecture(self) -> str:
        """The model class name, e.g. ``"Qwen2ForCausalLM"``."""
        return type(self.model).__name__

    def fresh_model(self) -> Any:
        """An independent copy of the model (same weights, dtype, device, attention kernel).

        Reloaded from :attr:`source` when it was loaded from disk or the Hub, else deep-copied.
        Backends that rewrite the module tree (the TransformerBridge) wrap such a copy so that
        the checkpoint's own model stays untouched.
        """
        if self.source != "<memory>" and self.load_kwargs:
            return _load_model(self.source, **self.load_kwargs)
        return copy.deepcopy(self.model)

    def describe(self) -> dict[str, Any]:
        """The JSON-able description written into manifests."""
        return {
            "source": self.source,
            "architecture": self.architecture,
            "dtype": dtype_name(self.dtype),
            "weight_sha256": self.weight_hash,
            "dims": self.dims.to_dict(),
        }

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, source: str = "<memory>") -> "Checkpoint":
        """Wrap a model and tokenizer already in memory (e.g. a random model built in a test).

        Raises:
            CheckpointError: the tokenizer is not a fast tokenizer or has more ids than the
                model's embedding has rows.
        """
        model.eval()
        param = next(model.parameters())
        _check_tokenizer(tokenizer, model.config, source)
        return cls(model=model, tokenizer=tokenizer, source=source, dtype=param.dtype,
                   device=param.device)


def _is_local(source: str | os.PathLike) -> bool:
    return Path(source).is_dir()


def _check_tokenizer(tokenizer: Any, config: Any, source: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(
            f"the tokenizer of {source} is a slow (Python) tokenizer; positions need the "
            "character offsets only fast tokenizers give: save a tokenizer.json beside the "
            "weights (PreTrainedTokenizerFast)"
        )
    vocab = getattr(getattr(config, "text_config", None) or config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > int(vocab):
        raise CheckpointError(
            f"the tokenizer of {source} has {len(tokenizer)} ids but the model's embedding has "
            f"only {vocab} rows: the tokenizer does not belong to this model"
        )


def _load_model(source: str, *, dtype: torch.dtype, device: str, attn_implementation: str | None,
                revision: str | None) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": False}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if revision is not None:
        kwargs["revision"] = revision
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    return model.to(device).eval()


def load_tokenizer(source: str, revision: str | None = None) -> Any:
    """The tokenizer saved with a checkpoint, exactly as its ``tokenizer.json`` defines it.

    ``tokenizer.json`` is authoritative when there is one: it is loaded as a
    ``PreTrainedTokenizerFast`` with the special tokens of ``tokenizer_config.json``. This matters:
    ``AutoTokenizer`` in transformers 5 ignores the declared ``tokenizer_class`` of every
    ``model_type: qwen2`` checkpoint (``qwen2`` is in its ``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``)
    and rebuilds Qwen's byte-level BPE pipeline from the vocabulary, which silently mis-tokenizes
    the task's word-level tokenizer saved beside a Qwen2 model organism. Without a
    ``tokenizer.json``, ``AutoTokenizer`` is used (``trust_remote_code`` off).

    Raises:
        OSError / ValueError: no tokenizer can be loaded from ``source`` (from transformers).
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    has_json = (Path(source) / "tokenizer.json").is_file() if _is_local(source) else True
    if has_json:
        try:
            return PreTrainedTokenizerFast.from_pretrained(source, revision=revision)
        except (OSError, ValueError):
            if _is_local(source):
                raise
    return AutoTokenizer.from_pretrained(source, trust_remote_code=False, revision=revision)


def load_checkpoint(
    source: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    revision: str | None = None,
) -> Checkpoint:
    """Load a causal LM and its tokenizer from a directory or a Hub id.

    Args:
        source: a local checkpoint directory (with ``config.json`` and the tokenizer files) or a
            Hub id (``"Qwen/Qwen2.5-1.5B-Instruct"``), used only if it is not a local directory.
        dtype: the dtype to load the weights in (``"float32"``, ``"bfloat16"``, ``"float16"``).
        device: where to put the model (``"cpu"``, ``"cuda:0"``...).
        attn_implementation: ``"eager"``, ``"sdpa"``... (None: the ``transformers`` default).
            Activations agree to ~1e-6 between kernels, exactly within one.
        revision: a Hub revision (branch, tag or commit), for Hub ids.

    Returns:
        A :class:`Checkpoint` with the model in eval mode; ``trust_remote_code`` is off.

    Raises:
        CheckpointError: the source is neither a checkpoint directory nor a Hub id that can be
            fetched (offline with ``HF_HUB_OFFLINE=1`` and not in the cache), the directory has no
            ``config.json``, the tokenizer is missing or slow, or it does not fit the model.
        ValueError: an unknown dtype.
    """
    torch_dtype = parse_dtype(dtype)
    src = str(source)
    if _is_local(src):
        if not (Path(src) / "config.json").is_file():
            raise CheckpointError(
                f"{src} is a directory but has no config.json: point --model at a Hugging Face "
                "checkpoint directory (save_pretrained output)"
            )
    elif src.startswith(("/", "./", "../", "~")) or src.count("/") > 1:
        raise CheckpointError(
            f"no checkpoint directory at {src} (and it is not a Hub id of the form owner/name)"
        )
    try:
        tokenizer = load_tokenizer(src, revision=revision)
    except (OSError, ValueError) as e:
        where = "the checkpoint directory" if _is_local(src) else "the Hub or the local cache"
        raise CheckpointError(
            f"cannot load the tokenizer of {src} from {where}: {e}. Save the tokenizer beside "
            "the weights (tokenizer.save_pretrained(DIR)); for a Hub id, make the Hub reachable "
            "(unset HF_HUB_OFFLINE) or pass a local directory"
        ) from None
    load_kwargs = dict(dtype=torch_dtype, device=str(device),
                       attn_implementation=attn_implementation, revision=revision)
    try:
        model = _load_model(src, **load_kwargs)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot load the model weights of {src}: {e}. For a Hub id, make the Hub reachable "
            "or pass a local checkpoint directory; trust_remote_code is off, so only "
            "architectures transformers ships can be loaded"
        ) from None
    _check_tokenizer(tokenizer, model.config, src)
    log.info("loaded %s (%s, %s, %s)", src, type(model).__name__, dtype_name(torch_dtype), device)
    return Checkpoint(model=model, tokenizer=tokenizer, source=src, dtype=torch_dtype,
                      device=torch.device(device), load_kwargs=load_kwargs)
