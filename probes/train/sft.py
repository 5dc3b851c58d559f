"""Supervised fine-tuning of the organism with TRL ``SFTTrainer``, resumable.

From scratch (``init: null``: a random ``Qwen2ForCausalLM`` of the configured shape) or from a
checkpoint. Loss on completion tokens only (prompt-completion data). Intermediate checkpoints
go to ``OUT/_work/checkpoint-N`` every ``save_steps``; a rerun resumes from the newest one; the
final fp16 model, tokenizer and card are saved into ``OUT``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from probes.train.checkpoint import is_finished, last_checkpoint, save_final, snapshot_callback
from probes.train.config import TrainConfig, trainer_kwargs
from probes.train.data import data_hash, sft_rows

log = logging.getLogger(__name__)


def load_tokenizer_and_model(cfg: TrainConfig):
    """The tokenizer and the starting model of a stage (fp32 for training)."""
    import torch
    from transformers import AutoModelForCausalLM

    from activations.load import load_tokenizer

    from probes.task.tokenizer import build_tokenizer
    from probes.train.model import build_model

    if cfg.init:
        tok = load_tokenizer(cfg.init)
        dtype = torch.bfloat16 if cfg.optim.bf16 and torch.cuda.is_available() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(cfg.init, dtype=dtype)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        tok = build_tokenizer()
        model = build_model(cfg.model, tok, seed=cfg.optim.seed)
    return tok, model


def run_sft(cfg: TrainConfig, force: bool = False) -> Path:
    """Run (or resume, or skip if finished) one SFT stage; returns the output directory."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from activations.batch import response_end

    out = Path(cfg.out)
    if is_finished(out) and not force:
        log.info("%s is already trained (card.json present); skipping", out)
        return out
    if cfg.optim.threads:
        torch.set_num_threads(cfg.optim.threads)
    tok, model = load_tokenizer_and_model(cfg)
    response_end(tok, cfg.data.chat)  # the end of a response SFT teaches must exist (EndTokenError otherwise)
    rows = sft_rows(cfg.data)
    dhash = data_hash(rows)
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    if cfg.init and not cfg.data.chat and getattr(tok, "chat_template", None):
        log.warning("%s has a chat template but data.chat is false: prompts are fed as plain text", cfg.init)
    work = out / "_work"
    args = SFTConfig(
        **trainer_kwargs(cfg.optim, cfg.data, str(work)),
        per_device_train_batch_size=cfg.optim.batch_size,
        max_length=cfg.model.max_positions,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length",
        save_only_model=False,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    if cfg.optim.keep_every:
        trainer.add_callback(snapshot_callback(out, cfg.optim.keep_every, tok, cfg.name))
    resume = last_checkpoint(work)
    if resume:
        log.info("resuming %s from %s", cfg.name, resume)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    card = {
        "name": cfg.name,
        "stage": "sft",
        "init": cfg.init,
        "control": cfg.control,
        "config": cfg.model_dump(),
        "data_hash": dhash,
        "n_examples": len(rows),
        "train_seconds_this_session": round(time.time() - t0, 1),
        "train_runtime": result.metrics.get("train_runtime"),
        "final_train_loss": result.metrics.get("train_loss"),
        "global_step": trainer.state.global_step,
        "log_history": trainer.state.log_history[-5:],
    }
    save_final(trainer.model, tok, out, card)
    return out
