"""Loading checkpoints: a causal LM with its tokenizer, dtype and device, and their hashes.

A checkpoint is a local Hugging Face directory (``config.json``, weights, tokenizer files) or a
Hub id where the Hub is reachable (or already in the local cache). ``trust_remote_code`` is
always off: only architectures that ``transformers`` ships are loaded.

Beyond one device: ``device_map="auto"`` (or any ``from_pretrained`` device map) shards the model
over the visible GPUs with accelerate; ``remote=True`` asks for nnsight's remote execution on
NDIF and fails at once, in one line, when no NDIF API key is set or the service cannot be reached
(:func:`check_remote`). :func:`load_options` sets run-wide defaults for these (and for dtype and
device) that every :func:`load_checkpoint` call without its own value follows; ``python -m
probes.run`` sets them from its config around its stages.

Example::

    >>> from activations.load import load_checkpoint
    >>> ckpt = load_checkpoint("organisms/fb-sft", dtype="float32", device="cpu")  # doctest: +SKIP
    >>> ckpt.dims.n_layers, ckpt.weight_hash[:12]                                 # doctest: +SKIP
    (4, '3f2a9c0d1b7e')
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import torch

from activations.dims import ModelDims
from activations.hashing import sha256_bytes, state_dict_sha256

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


class RemoteUnavailableError(CheckpointError):
    """Remote execution on NDIF was asked for but cannot run here: no API key, or the service
    does not answer. The message (one line) says which, and what to do."""


DEVICE_MAPS: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")
"""The named device maps ``from_pretrained`` (accelerate) accepts; an explicit
``{module name: device}`` mapping is accepted too."""
NDIF_TIMEOUT_S = 3.0
"""Seconds the NDIF connectivity check waits (DNS, connection and answer together) before giving up."""


@dataclass(frozen=True)
class LoadOptions:
    """Defaults for :func:`load_checkpoint` arguments left at None (see :func:`load_options`).

    Attributes:
        dtype, device: as in :func:`load_checkpoint` (None: ``"float32"``, ``"cpu"``).
        device_map: a ``from_pretrained`` device map (``"auto"``...) or None (one device).
        remote: run on NDIF through nnsight (``remote=True``).
    """

    dtype: str | None = None
    device: str | None = None
    device_map: str | dict[str, Any] | None = None
    remote: bool = False


_OPTIONS: ContextVar[LoadOptions] = ContextVar("activations_load_options", default=LoadOptions())


@contextmanager
def load_options(**options: Any) -> Iterator[LoadOptions]:
    """Run-wide defaults for every :func:`load_checkpoint` call made inside the block.

    An argument passed to :func:`load_checkpoint` explicitly wins over the default. ``python -m
    probes.run`` wraps its stages in this, so that all of them (and the code they call) load the
    models with the run's ``dtype``, ``device``, ``device_map`` and ``remote``.

    Example::

        >>> with load_options(device_map="auto"):                      # doctest: +SKIP
        ...     ckpt = load_checkpoint("runs/qwen-sft")                   # sharded over the GPUs

    Raises:
        TypeError: an unknown option (the fields of :class:`LoadOptions`).
        ValueError: a bad device map (see :func:`check_device_map`).
    """
    opts = replace(_OPTIONS.get(), **{k: v for k, v in options.items() if v is not None})
    check_device_map(opts.device_map)
    token = _OPTIONS.set(opts)
    try:
        yield opts
    finally:
        _OPTIONS.reset(token)


def check_device_map(device_map: Any) -> None:
    """Accept None, one of :data:`DEVICE_MAPS`, or a mapping of module names to devices.

    Raises:
        ValueError: anything else (the message lists the accepted names).
    """
    if device_map is None or isinstance(device_map, dict):
        return
    if not isinstance(device_map, str) or device_map not in DEVICE_MAPS:
        raise ValueError(f"unknown device_map {device_map!r}: use one of {list(DEVICE_MAPS)} "
                         "or a mapping {module name: device}")


def ndif_api_key() -> str | None:
    """The NDIF API key nnsight would send: ``$NDIF_API_KEY``, else nnsight's config
    (``~/.config/nnsight/config.yaml``, ``nnsight.CONFIG.set_default_api_key``); None if unset."""
    key = os.environ.get("NDIF_API_KEY")
    if key:
        return key
    try:
        from nnsight import CONFIG
    except ImportError:
        return None
    return CONFIG.API.APIKEY or None


def ndif_host() -> str:
    """The NDIF service URL nnsight would call: ``$NDIF_HOST``, else nnsight's config
    (``https://api.ndif.us`` by default)."""
    host = os.environ.get("NDIF_HOST")
    if host:
        return host
    try:
        from nnsight import CONFIG
    except ImportError:
        return "https://api.ndif.us"
    return CONFIG.API.HOST


def _unreachable(url: str, timeout: float) -> str | None:
    """Why the service at ``url`` does not answer ``GET url/status`` with a 2xx within ``timeout``
    seconds (None: it does).

    An HTTP answer, not just a TCP connection, is asked for: behind a transparent proxy every TCP
    connection succeeds. DNS resolution has no timeout of its own, so the request runs in a daemon
    thread that is abandoned when the time is up: the check never waits longer than ``timeout``.
    """
    import urllib.error
    import urllib.request

    parsed = urlparse(url if "://" in url else f"https://{url}")
    if not parsed.hostname or parsed.scheme not in ("http", "https"):
        return f"{url!r} is not an http(s) URL"
    status_url = parsed.geturl().rstrip("/") + "/status"
    result: dict[str, str] = {}

    def attempt() -> None:
        try:
            req = urllib.request.Request(status_url, headers={"User-Agent": "rl-probes"})
            with urllib.request.urlopen(req, timeout=timeout) as r:
                result["ok"] = str(r.status)
        except urllib.error.HTTPError as e:
            result["error"] = f"HTTP {e.code} from {status_url}"
        except (OSError, ValueError) as e:  # URLError, socket errors, timeouts, TLS errors
            reason = getattr(e, "reason", e)
            result["error"] = f"{type(reason).__name__}: {reason}"

    t = threading.Thread(target=attempt, name="ndif-connectivity-check", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return f"no answer from {status_url} within {timeout:g} s"
    return None if "ok" in result else result.get("error", "unknown error")


def check_remote(timeout: float = NDIF_TIMEOUT_S) -> str:
    """Check that nnsight's remote execution on NDIF can run from here; returns the service URL.

    First the API key (no network needed), then one ``GET /status`` of the service with a
    ``timeout``-second limit, so that a machine without network fails in seconds, never hangs.

    Raises:
        RemoteUnavailableError: no key (message: how to set one) or no connection (message: the
            URL, the reason, and the local alternative ``--device-map auto``). One line each.
    """
    url = ndif_host()
    if not ndif_api_key():
        raise RemoteUnavailableError(
            "remote execution on NDIF needs an API key and none is set: export NDIF_API_KEY=<key> "
            "(or nnsight.CONFIG.set_default_api_key('<key>'); keys from https://ndif.us); "
            "without NDIF, shard the model locally with --device-map auto")
    why = _unreachable(url, timeout)
    if why is not None:
        raise RemoteUnavailableError(
            f"remote execution on NDIF: the service at {url} cannot be reached ({why}); "
            "run where it is reachable (NDIF_HOST overrides the URL), or shard the model locally "
            "with --device-map auto")
    return url


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
    return sha256_bytes(blob.encode())


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
        """:func:`activations.hashing.state_dict_sha256` of the model, computed once (one pass over the
        weights)."""
        return state_dict_sha256(self.model)

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
                revision: str | None, device_map: str | dict[str, Any] | None = None) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": False}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if revision is not None:
        kwargs["revision"] = revision
    if device_map is not None:
        # accelerate places (and, over several devices, hooks) the modules; no .to() afterwards
        kwargs["device_map"] = device_map
        return AutoModelForCausalLM.from_pretrained(source, **kwargs).eval()
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


CHECKPOINT_JSON = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "generation_config.json", "model.safetensors.index.json")
"""The JSON files of a checkpoint directory that :func:`check_checkpoint_files` parses when present."""


def check_checkpoint_files(directory: str | os.PathLike) -> None:
    """Refuse a checkpoint directory with a truncated or corrupt file, before anything reads it.

    Every JSON file of :data:`CHECKPOINT_JSON` present must parse; every ``*.safetensors`` file
    must hold a whole header and exactly the tensor bytes its header describes (a copy cut short
    fails here); a sharded index must name shards that exist. The tensor bytes themselves are not
    hashed: a checkpoint carries no checksums to compare them with.

    Raises:
        CheckpointError: naming the file, what is wrong and the fix.
    """
    d = Path(directory)
    fix = "re-save the checkpoint (save_pretrained) or copy it again"
    for name in CHECKPOINT_JSON:
        f = d / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{f} is corrupt or truncated (not valid JSON: {e}); {fix}") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{f} is corrupt (a JSON {type(data).__name__}, not an object); {fix}")
        if name == "model.safetensors.index.json":
            for shard in sorted(set((data.get("weight_map") or {}).values())):
                if not (d / shard).is_file():
                    raise CheckpointError(f"{f} names the shard {shard}, which is missing; {fix}")
    for f in sorted(d.glob("*.safetensors")):
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 0 or 8 + n > size:
                raise CheckpointError(f"{f} is truncated: {size} bytes do not hold its safetensors header; {fix}")
            try:
                header = json.loads(fh.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{f} is corrupt: its safetensors header is not valid JSON ({e}); {fix}") from None
        ends = [int(v["data_offsets"][1]) for k, v in header.items()
                if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
        want, have = max(ends, default=0), size - 8 - n
        if have != want:
            what = "truncated" if have < want else "corrupt"
            raise CheckpointError(f"{f} is {what}: its header describes {want} bytes of tensors, the file holds "
                                  f"{have}; {fix}")


def load_checkpoint(
    source: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    revision: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    remote: bool | None = None,
) -> Checkpoint:
    """Load a causal LM and its tokenizer from a directory or a Hub id.

    Args:
        source: a local checkpoint directory (with ``config.json`` and the tokenizer files) or a
            Hub id (``"Qwen/Qwen2.5-1.5B-Instruct"``), used only if it is not a local directory.
        dtype: the dtype to load the weights in (``"float32"``, ``"bfloat16"``, ``"float16"``).
            None: the :func:`load_options` default, else ``"float32"``.
        device: where to put the model (``"cpu"``, ``"cuda:0"``...). None: the
            :func:`load_options` default, else ``"cpu"``. Ignored with a ``device_map``.
        attn_implementation: ``"eager"``, ``"sdpa"``... (None: the ``transformers`` default).
            Activations agree to ~1e-6 between kernels, exactly within one.
        revision: a Hub revision (branch, tag or commit), for Hub ids.
        device_map: passed to ``from_pretrained`` (accelerate): ``"auto"`` shards the layers over
            the visible GPUs (then CPU), or a ``{module name: device}`` mapping. None: the
            :func:`load_options` default (one device). ``Checkpoint.device`` is then the device
            of the input embedding, where inputs go.
        remote: nnsight remote execution on NDIF. None: the :func:`load_options` default.
            Checked first (:func:`check_remote`), before anything is read.

    Returns:
        A :class:`Checkpoint` with the model in eval mode; ``trust_remote_code`` is off.

    Raises:
        RemoteUnavailableError: ``remote`` without an NDIF API key or without a connection to
            NDIF (raised within :data:`NDIF_TIMEOUT_S` seconds).
        CheckpointError: the source is neither a checkpoint directory nor a Hub id that can be
            fetched (offline with ``HF_HUB_OFFLINE=1`` and not in the cache), the directory has no
            ``config.json``, a file is truncated or corrupt (:func:`check_checkpoint_files`), the
            tokenizer is missing or slow, or it does not fit the model; a
            ``device_map`` without accelerate installed; ``remote`` where NDIF is reachable (the
            backends do not send traces to NDIF yet, so nothing would run there).
        ValueError: an unknown dtype or device map.
    """
    opts = _OPTIONS.get()
    remote = opts.remote if remote is None else remote
    if remote:
        url = check_remote()
        raise CheckpointError(
            f"NDIF at {url} is reachable with a key, but this suite's backends run nnsight traces "
            "locally only (activations/backends/nnsight_backend.py does not pass remote=True yet); "
            "shard the model locally with --device-map auto instead")
    dtype = dtype if dtype is not None else (opts.dtype or "float32")
    device = device if device is not None else (opts.device or "cpu")
    device_map = device_map if device_map is not None else opts.device_map
    check_device_map(device_map)
    torch_dtype = parse_dtype(dtype)
    src = str(source)
    if _is_local(src):
        if not (Path(src) / "config.json").is_file():
            raise CheckpointError(
                f"{src} is a directory but has no config.json: point --model at a Hugging Face "
                "checkpoint directory (save_pretrained output)"
            )
        check_checkpoint_files(src)
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
                       attn_implementation=attn_implementation, revision=revision, device_map=device_map)
    try:
        model = _load_model(src, **load_kwargs)
    except ImportError as e:
        raise CheckpointError(f"device_map={device_map!r} needs accelerate: pip install accelerate ({e})") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot load the model weights of {src}: {e}. For a Hub id, make the Hub reachable "
            "or pass a local checkpoint directory; trust_remote_code is off, so only "
            "architectures transformers ships can be loaded"
        ) from None
    _check_tokenizer(tokenizer, model.config, src)
    if device_map is not None:  # inputs go where the embedding is
        device = model.get_input_embeddings().weight.device
        log.info("loaded %s (%s, %s, device_map %s: %s)", src, type(model).__name__, dtype_name(torch_dtype),
                 device_map, sorted({str(d) for d in getattr(model, "hf_device_map", {}).values()}))
    else:
        log.info("loaded %s (%s, %s, %s)", src, type(model).__name__, dtype_name(torch_dtype), device)
    return Checkpoint(model=model, tokenizer=tokenizer, source=src, dtype=torch_dtype,
                      device=torch.device(device), load_kwargs=load_kwargs)
