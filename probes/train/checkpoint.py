"""Saving trained organisms: fp16 safetensors, the tokenizer, and a card (``card.json``)."""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path

from activations.io import atomic_write_text


def last_checkpoint(work_dir: Path) -> str | None:
    """The newest complete ``checkpoint-N`` under ``work_dir`` (None if there is none)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not work_dir.is_dir():
        return None
    return get_last_checkpoint(str(work_dir))


def save_final(model, tokenizer, out: Path, card: dict, dtype: str = "float16") -> None:
    """Save the model in ``dtype`` with its tokenizer and card into ``out`` (atomically: a
    temporary folder renamed into place, so a half-saved checkpoint never looks finished)."""
    import torch

    tmp = out.with_name(out.name + ".saving")
    if tmp.exists():
        shutil.rmtree(tmp)
    m = model.to(getattr(torch, dtype))
    m.save_pretrained(str(tmp), safe_serialization=True)
    model.to(torch.float32)
    tokenizer.save_pretrained(str(tmp))
    card = dict(card)
    card.update({"saved_dtype": dtype, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "python": platform.python_version(), "versions": _versions()})
    atomic_write_text(tmp / "card.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
    keep = [p for p in ("behaviour.json", "behaviour.md") if (out / p).exists()]
    for p in keep:
        shutil.copy2(out / p, tmp / p)
    for sub in ("_work", "snapshots"):  # intermediate checkpoints for later resumes; keep_every snapshots
        if (out / sub).is_dir():
            (out / sub).rename(tmp / sub)
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def save_snapshot(model, tokenizer, folder: Path, meta: dict, dtype: str = "float16") -> Path:
    """A model-only snapshot: the weights in ``dtype`` (the final checkpoint's format), the
    tokenizer and ``snapshot.json`` (``meta``), written to a temporary folder renamed into place
    (an interrupted save leaves no half snapshot). The model itself is not changed."""
    import torch

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".saving")
    if tmp.exists():
        shutil.rmtree(tmp)
    state, seen = {}, set()
    for k, v in model.state_dict().items():  # tied weights (the unembedding) are stored once, as save_pretrained does
        if v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        state[k] = v.detach().to(getattr(torch, dtype)).contiguous()
    model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    atomic_write_text(tmp / "snapshot.json", json.dumps({**meta, "saved_dtype": dtype}, indent=2, sort_keys=True) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def snapshot_callback(out: Path, every: int, tokenizer, name: str):
    """A ``transformers.TrainerCallback`` that saves :func:`save_snapshot` into
    ``out/snapshots/step-N`` every ``every`` optimizer steps (the Trainer's own checkpoints, with
    optimizer state, stay as they are for resuming)."""
    from transformers import TrainerCallback

    class _Snapshots(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if model is not None and state.global_step % every == 0:
                save_snapshot(model, tokenizer, Path(out) / "snapshots" / f"step-{state.global_step}",
                              {"name": name, "step": state.global_step})
            return control

    return _Snapshots()


def is_finished(out: Path) -> bool:
    """True when ``out`` holds a saved final model with its card."""
    return (out / "card.json").exists() and (out / "model.safetensors").exists()


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "trl", "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
