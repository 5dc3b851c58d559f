"""Random-init checkpoints of a real model's exact shape: ``python -m probes.synth``.

Qwen2.5-1.5B-Instruct weights cannot be fetched on every machine, so the real-scale path (loading,
caching, patching, the main job, the benchmarks) is exercised on randomly initialised
checkpoints of exactly its shape, written as a Hugging Face directory that
:func:`activations.load.load_checkpoint` and ``python -m probes.run`` read like any other::

    python -m probes.synth --shape qwen2.5-1.5b --seed 0 --out synth/pre            # 6.2 GB fp32
    python -m probes.synth --perturb-from synth/pre --seed 1 --out synth/post      # its "post-RL" twin
    python -m probes.run --pre-rl synth/pre --post-rl synth/post --quick

Shapes (:data:`SHAPES`): ``qwen2.5-1.5b`` is Qwen2.5-1.5B-Instruct's ``config.json`` written out
field by field (:func:`qwen2_5_1_5b_config`: 28 layers, d_model 1536, 12 query heads, 2 key/value
heads, d_mlp 8960, vocabulary 151,936, tied embeddings, rope theta 1e6, RMS eps 1e-6, 32,768
positions); ``tiny`` is a seconds-fast model of the same family for tests (2 layers, d_model 64).

The tokenizer is the task's word-level tokenizer (:func:`probes.task.tokenizer.build_tokenizer`)
with the same ids for every task word, padded with filler words ``<|extra_i|>`` up to the model's
vocabulary (:func:`synth_tokenizer`), so that every id the model can emit decodes to text and
``len(tokenizer)`` equals the embedding's rows, as in a real checkpoint. It round-trips every task
prompt and trace exactly. The token ids in ``config.json`` (bos, eos, pad) are this tokenizer's,
not Qwen's (151643, 151645), since the real tokenizer is not available offline.

Weights (:func:`init_state`) follow ``transformers``' initialisation of Qwen2 (weights and
embeddings ``N(0, initializer_range = 0.02)``, RMSNorm weights 1) except that the q/k/v biases
are ``N(0, 0.02)`` rather than 0, so that a relative perturbation changes them too. Each tensor is
drawn from its own generator seeded by ``sha256(seed, name)``: reproducible bit for bit and
independent of the order tensors are made in. ``--perturb-from DIR`` writes a twin of ``DIR``
(same config and tokenizer) whose every tensor is ``theta + eps * rms(theta) * z`` with
``z ~ N(0, 1)`` seeded the same way (:func:`perturb_state`), so its relative change per tensor is
``eps`` in expectation (``--perturb-scale``, default 0.01; in bfloat16 the rounding of the stored
weights adds about 0.002 of relative noise). ``synth.json`` beside the weights records the shape,
seed, dtype, source and the measured relative change.

Weights are written as safetensors shards of at most ``--max-shard-gb`` (default 2) with a
``model.safetensors.index.json``, the layout ``save_pretrained`` writes, one tensor at a time, so
peak memory is about one shard, never the whole model. The last line printed is
``synth shape=S params=P dtype=D out=DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from activations.io import write_json

log = logging.getLogger(__name__)

EXTRA_TOKEN = "<|extra_{}|>"
"""Filler words that pad the task tokenizer up to the model's vocabulary (id ``i`` -> ``<|extra_i|>``)."""
CHAT_WORDS = ("<|im_start|>", "<|im_end|>", "system", "user", "assistant")
"""The words of the synth chat template, the first ids after the task vocabulary."""
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
"""A word-level stand-in for Qwen2.5's ChatML template (``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n``):
the same turns and generation prompt, with spaces where Qwen has newlines so that the
whitespace-split tokenizer keeps every word, so the ``chat: true`` path runs offline."""
SAFE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""The dtypes weights can be written in (``--dtype``)."""
INDEX_FILE = "model.safetensors.index.json"
CARD_FILE = "synth.json"


class SynthError(ValueError):
    """Bad input to the synthesiser (unknown shape, a source that is not a checkpoint, ...);
    the message names the problem and the fix."""


@dataclass(frozen=True)
class Shape:
    """A model shape: the values of a ``Qwen2Config`` that differ from Qwen2.5-1.5B-Instruct's."""

    name: str
    description: str
    overrides: dict[str, Any]


def qwen2_5_1_5b_config(pad_token_id: int, bos_token_id: int, eos_token_id: int, **overrides: Any):
    """The ``Qwen2Config`` of Qwen2.5-1.5B-Instruct, every field written out.

    Source: the model's ``config.json`` on the Hugging Face Hub (``Qwen/Qwen2.5-1.5B-Instruct``):
    28 layers, hidden 1536, 12 attention heads (head_dim 128), 2 key/value heads, intermediate
    8960, vocabulary 151,936 rows, tied input/output embeddings, rope theta 1,000,000, RMSNorm eps
    1e-6, 32,768 positions, SiLU, no sliding window (``max_window_layers`` 21 is inert then),
    initializer range 0.02, no attention dropout. The token ids are the caller's (the real ones
    are bos 151643, eos 151645; see the module docstring).

    Args:
        pad_token_id, bos_token_id, eos_token_id: the tokenizer's special ids.
        overrides: fields to change (the ``tiny`` shape's sizes).

    Returns:
        transformers.Qwen2Config (``architectures = ["Qwen2ForCausalLM"]``).
    """
    from transformers import Qwen2Config

    fields: dict[str, Any] = dict(
        architectures=["Qwen2ForCausalLM"],
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=32768,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        use_sliding_window=False,
        sliding_window=32768,
        max_window_layers=21,
        attention_dropout=0.0,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    fields.update(overrides)
    return Qwen2Config(**fields)


SHAPES: dict[str, Shape] = {
    "qwen2.5-1.5b": Shape("qwen2.5-1.5b", "Qwen2.5-1.5B-Instruct (1.54B parameters)", {}),
    "tiny": Shape("tiny", "2 layers, d_model 64, 4 heads, 2 kv heads, d_mlp 128, vocabulary 256 (tests)",
                  dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       max_window_layers=2)),
}
"""The shapes ``--shape`` accepts."""


def synth_tokenizer(vocab_size: int, task: str | None = None):
    """The task's word-level tokenizer (``task``: a ``module:Name`` spec, default the finite-field
    task; :func:`probes.tasks.word_tokenizer` of its vocabulary) padded with filler words to
    ``vocab_size`` ids.

    Ids ``0 .. V_task-1`` are the task tokenizer's (so task text encodes to the same ids); the
    next ids are :data:`CHAT_WORDS` (where the vocabulary has room), and the rest are the words
    ``<|extra_i|>``. The tokenizer carries :data:`CHAT_TEMPLATE` as its chat template. Nothing else changes (whitespace
    split, word-level model, the decoder that joins words with single spaces).

    Returns:
        transformers.PreTrainedTokenizerFast with ``len == vocab_size``.

    Raises:
        SynthError: ``vocab_size`` smaller than the task vocabulary.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from probes.tasks import load_task, word_tokenizer

    base = word_tokenizer(load_task(task).vocabulary())
    n_task = len(base)
    if vocab_size < n_task:
        raise SynthError(f"vocab_size {vocab_size} is smaller than the task vocabulary ({n_task} words)")
    spec = json.loads(base.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    chat = CHAT_WORDS if vocab_size >= n_task + len(CHAT_WORDS) else ()
    for i, w in enumerate(chat):
        vocab[w] = n_task + i
    for i in range(n_task + len(chat), vocab_size):
        vocab[EXTRA_TOKEN.format(i)] = i
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        pad_token=base.pad_token, unk_token=base.unk_token, bos_token=base.bos_token, eos_token=base.eos_token,
        clean_up_tokenization_spaces=False,
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = base.padding_side
    fast.model_max_length = base.model_max_length
    return fast


def _seed_of(seed: int, name: str, salt: str) -> int:
    digest = hashlib.sha256(f"{salt}:{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _normal(shape: tuple[int, ...], seed: int, name: str, salt: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(_seed_of(seed, name, salt))
    return torch.randn(shape, generator=g, dtype=torch.float32)


def weight_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a checkpoint of ``config`` stores, in name order (the
    tied ``lm_head.weight`` is not stored). Built on the meta device: no memory is allocated."""
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)
    return dict(sorted(shapes.items()))


def init_state(config: Any, seed: int) -> Iterator[tuple[str, torch.Tensor]]:
    """The random weights of a checkpoint of ``config``, one float32 tensor at a time.

    Norm weights are 1, everything else ``N(0, config.initializer_range)``, each tensor from a
    generator seeded by ``sha256("init", seed, name)``.

    Yields:
        ``(name, tensor)`` in name order.
    """
    std = float(getattr(config, "initializer_range", 0.02))
    for name, shape in weight_shapes(config).items():
        if name.endswith("norm.weight"):
            yield name, torch.ones(shape)
        else:
            yield name, _normal(shape, seed, name, "init").mul_(std)


def rms(t: torch.Tensor) -> float:
    """Root mean square of a tensor's entries (float64 accumulation)."""
    return float(t.double().pow(2).mean().sqrt())


def perturb_state(tensors: Iterator[tuple[str, torch.Tensor]], seed: int, scale: float,
                  stats: dict[str, float] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``theta + scale * rms(theta) * z`` for each tensor, ``z ~ N(0, 1)`` from a generator seeded
    by ``sha256("perturb", seed, name)``: a relative change of ``scale`` per tensor in expectation.

    Args:
        tensors: ``(name, tensor)`` pairs (any float dtype; the result is float32).
        seed: the perturbation seed. scale: ``eps`` (>= 0).
        stats: if given, filled with ``sum_sq_delta`` and ``sum_sq_theta`` (float32 values).

    Raises:
        SynthError: a negative scale.
    """
    if scale < 0 or not math.isfinite(scale):
        raise SynthError(f"--perturb-scale must be a finite number >= 0, got {scale}")
    for name, t in tensors:
        t = t.float()
        delta = _normal(tuple(t.shape), seed, name, "perturb").mul_(scale * rms(t))
        if stats is not None:
            stats["sum_sq_delta"] = stats.get("sum_sq_delta", 0.0) + float(delta.double().pow(2).sum())
            stats["sum_sq_theta"] = stats.get("sum_sq_theta", 0.0) + float(t.double().pow(2).sum())
        yield name, t.add_(delta)


def write_shards(tensors: Iterator[tuple[str, torch.Tensor]], out: Path, dtype: torch.dtype,
                 max_shard_bytes: int, on_tensor: Callable[[str, torch.Tensor], None] | None = None) -> int:
    """Write tensors as safetensors shards (``model-0000i-of-0000n.safetensors``) and an index, or
    one ``model.safetensors`` when they fit in one shard. Returns the number of parameters.

    Memory: one shard's tensors at a time. ``on_tensor(name, stored)`` sees each tensor as stored.
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    shards: list[list[str]] = [[]]
    pending: dict[str, torch.Tensor] = {}
    size, n_params, total = 0, 0, 0
    tmp_names: list[Path] = []

    def flush() -> None:
        nonlocal pending, size
        if not pending:
            return
        path = out / f"shard-{len(tmp_names):05d}.tmp"
        save_file(pending, str(path), metadata={"format": "pt"})
        tmp_names.append(path)
        shards.append([])
        pending, size = {}, 0

    for name, t in tensors:
        t = t.to(dtype).contiguous()
        if on_tensor is not None:
            on_tensor(name, t)
        nbytes = t.numel() * t.element_size()
        if pending and size + nbytes > max_shard_bytes:
            flush()
        pending[name] = t
        shards[-1].append(name)
        size += nbytes
        total += nbytes
        n_params += t.numel()
    flush()
    shards = [s for s in shards if s]
    if len(tmp_names) == 1:
        os.replace(tmp_names[0], out / "model.safetensors")
    else:
        n = len(tmp_names)
        weight_map = {}
        for i, (path, names) in enumerate(zip(tmp_names, shards)):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(path, out / final)
            weight_map.update({k: final for k in names})
        write_json(out / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return n_params


def read_state(src: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a safetensors checkpoint directory, one at a time, in name order.

    Raises:
        SynthError: no ``*.safetensors`` file in ``src``.
    """
    from safetensors import safe_open

    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise SynthError(f"--perturb-from {src}: no *.safetensors weights there")
    where = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            where.update({k: f for k in fh.keys()})
    for name in sorted(where):
        with safe_open(str(where[name]), framework="pt") as fh:
            yield name, fh.get_tensor(name)


def _check_out(out: Path) -> None:
    """``out`` is empty, new, or a checkpoint this module wrote (its weights are replaced).

    Raises:
        SynthError: ``out`` holds weights or a config that ``probes.synth`` did not write.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise SynthError(f"--out {out} is a file, not a directory")
    foreign = (out / "config.json").exists() or any(out.glob("*.safetensors"))
    if foreign and not (out / CARD_FILE).is_file():
        raise SynthError(f"--out {out} holds a checkpoint that probes.synth did not write (no {CARD_FILE}); "
                         "choose a new or empty directory")


def _clear_weights(out: Path) -> None:
    for f in list(out.glob("*.safetensors")) + list(out.glob("*.tmp")) + [out / INDEX_FILE]:
        if f.exists():
            f.unlink()


def make_synth(shape: str, seed: int, out: str | os.PathLike, dtype: str = "float32",
               max_shard_gb: float = 2.0, task: str | None = None) -> dict[str, Any]:
    """Write a random-init checkpoint of ``shape`` (config, tokenizer, safetensors, ``synth.json``).

    Args:
        shape: a key of :data:`SHAPES`. seed: the weight seed.
        out: the checkpoint directory (created; weights already there are replaced).
        dtype: ``"float32"`` or ``"bfloat16"`` (the stored weights).
        max_shard_gb: the largest safetensors file, in GB (1e9 bytes).
        task: the task whose words the tokenizer holds (``module:Name``; default the finite-field task).

    Returns:
        The card written to ``synth.json``.

    Raises:
        SynthError: an unknown shape or dtype, a bad shard size, or an ``out`` that holds a
            checkpoint this module did not write.
    """
    from transformers import GenerationConfig

    if shape not in SHAPES:
        raise SynthError(f"unknown shape {shape!r}: use one of {sorted(SHAPES)}")
    torch_dtype = _dtype(dtype)
    max_bytes = _shard_bytes(max_shard_gb)
    vocab = int(SHAPES[shape].overrides.get("vocab_size", 151936))
    tok = synth_tokenizer(vocab, task)
    config = qwen2_5_1_5b_config(tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, **SHAPES[shape].overrides)
    config.dtype = torch_dtype
    out = Path(out)
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear_weights(out)
    t0 = time.perf_counter()
    n_params = write_shards(init_state(config, seed), out, torch_dtype, max_bytes)
    config.save_pretrained(out)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(out)
    tok.save_pretrained(out)
    card = {"kind": "random-init (not trained)", "shape": shape, "description": SHAPES[shape].description,
            "seed": seed, "dtype": dtype_name(torch_dtype), "n_params": n_params, "vocab_size": vocab,
            "tokenizer": "task word-level tokenizer padded with <|extra_i|> fillers", "task": task,
            "seconds": round(time.perf_counter() - t0, 1), "source": None}
    write_json(out / CARD_FILE, card)
    return card


def make_twin(src: str | os.PathLike, seed: int, out: str | os.PathLike, scale: float = 0.01,
              dtype: str | None = None, max_shard_gb: float = 2.0) -> dict[str, Any]:
    """Write a perturbed twin of the checkpoint ``src`` into ``out`` (see :func:`perturb_state`).

    The config, generation config and tokenizer files are copied unchanged, so the pair passes
    :func:`activations.pair.check_pair`. ``dtype`` None keeps the source's dtype.

    Returns:
        The card written to ``synth.json`` (``relative_change``: ``||delta|| / ||theta||`` over
        all tensors, in float32 before the weights are stored).

    Raises:
        SynthError: ``src`` is not a checkpoint directory with safetensors weights, ``out`` is
            ``src`` or holds a checkpoint this module did not write, or a bad scale, dtype or
            shard size.
    """
    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise SynthError(f"--perturb-from {src} is not a checkpoint directory (no config.json)")
    if out.resolve() == src.resolve():
        raise SynthError("--out must differ from --perturb-from (the twin is written beside its source)")
    src_card = json.loads((src / CARD_FILE).read_text()) if (src / CARD_FILE).is_file() else {}
    if dtype is None:
        first = next(read_state(src))[1]
        torch_dtype = first.dtype if first.dtype in SAFE_DTYPES.values() else torch.float32
    else:
        torch_dtype = _dtype(dtype)
    max_bytes = _shard_bytes(max_shard_gb)
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear_weights(out)
    t0 = time.perf_counter()
    stats: dict[str, float] = {}
    n_params = write_shards(perturb_state(read_state(src), seed, scale, stats), out, torch_dtype, max_bytes)
    for f in src.iterdir():
        if f.is_file() and (f.suffix in (".json", ".jinja", ".txt", ".model") or f.name == "merges.txt") \
                and f.name not in (INDEX_FILE, CARD_FILE):
            shutil.copy2(f, out / f.name)
    rel = math.sqrt(stats["sum_sq_delta"] / stats["sum_sq_theta"]) if stats.get("sum_sq_theta") else 0.0
    card = {"kind": "perturbed twin (not trained)", "shape": src_card.get("shape"), "seed": seed,
            "dtype": dtype_name(torch_dtype), "n_params": n_params, "source": str(src),
            "source_seed": src_card.get("seed"), "perturb_scale": scale, "relative_change": rel,
            "seconds": round(time.perf_counter() - t0, 1)}
    write_json(out / CARD_FILE, card)
    return card


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    key = {"fp32": "float32", "bf16": "bfloat16"}.get(name, name)
    if key not in SAFE_DTYPES:
        raise SynthError(f"unknown --dtype {name!r}: use one of {sorted(SAFE_DTYPES)}")
    return SAFE_DTYPES[key]


def _shard_bytes(gb: float) -> int:
    if not gb > 0:
        raise SynthError(f"--max-shard-gb must be > 0, got {gb}")
    return int(gb * 1e9)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m probes.synth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), help="the model shape (not with --perturb-from: the "
                    "source's config is kept)")
    ap.add_argument("--seed", type=int, required=True, help="the weight seed (or the perturbation seed)")
    ap.add_argument("--out", required=True, metavar="DIR", help="the checkpoint directory to write")
    ap.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: float32; with --perturb-from, "
                    "the source's)")
    ap.add_argument("--perturb-from", metavar="DIR", help="write a perturbed twin of this checkpoint instead")
    ap.add_argument("--perturb-scale", type=float, default=0.01,
                    help="eps: each tensor changes by eps * rms(tensor) * N(0, 1) (default 0.01)")
    ap.add_argument("--task", metavar="MODULE:NAME", default=None,
                    help="the task whose words the tokenizer holds (default: the finite-field task; not with "
                         "--perturb-from, whose twin keeps its source's tokenizer)")
    ap.add_argument("--max-shard-gb", type=float, default=2.0, help="largest safetensors file in GB (default 2)")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    from probes.tasks import TaskError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.perturb_from and args.task:
            raise SynthError("--task does not apply with --perturb-from: the twin keeps its source's tokenizer "
                             "(and so its task); drop --task")
        if args.perturb_from:
            src_cfg = Path(args.perturb_from) / "config.json"
            if args.shape and src_cfg.is_file() and (Path(args.perturb_from) / CARD_FILE).is_file():
                src_shape = json.loads((Path(args.perturb_from) / CARD_FILE).read_text()).get("shape")
                if src_shape and src_shape != args.shape:
                    raise SynthError(f"--shape {args.shape} but --perturb-from {args.perturb_from} has shape "
                                     f"{src_shape}: drop --shape (the twin keeps its source's config)")
            card = make_twin(args.perturb_from, args.seed, args.out, args.perturb_scale, args.dtype,
                             args.max_shard_gb)
            print(f"perturbed {card['n_params']} parameters by eps={args.perturb_scale}: "
                  f"relative change {card['relative_change']:.4g}", file=sys.stderr)
        else:
            if not args.shape:
                raise SynthError("give --shape (one of " + ", ".join(sorted(SHAPES)) + ") or --perturb-from DIR")
            card = make_synth(args.shape, args.seed, args.out, args.dtype or "float32", args.max_shard_gb, args.task)
    except (SynthError, TaskError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"synth shape={card['shape']} params={card['n_params']} dtype={card['dtype']} out={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
