"""RL of the organism with TRL ``GRPOTrainer`` and the verifier's reward, resumable.

Group relative policy optimisation (GRPO; Shao et al. 2024, arXiv 2402.03300) as TRL
implements it: ``prompts_per_step`` prompts x ``num_generations`` sampled completions per
step, rewards from :mod:`probes.train.reward`, advantages normalised within each group, a KL
penalty ``beta`` to the starting (SFT) model, loss aggregation ``loss_type`` (default
``dapo``). Intermediate checkpoints go to ``OUT/_work/checkpoint-N``; a rerun resumes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from probes.train.checkpoint import is_finished, last_checkpoint, save_final, snapshot_callback
from probes.train.config import TrainConfig, trainer_kwargs
from probes.train.data import completion_budget, data_hash, grpo_rows
from probes.train.reward import make_reward_func

log = logging.getLogger(__name__)


def run_grpo(cfg: TrainConfig, force: bool = False) -> Path:
    """Run (or resume, or skip if finished) one GRPO stage; returns the output directory."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from activations.batch import check_end_token, stop_token_ids
    from probes.train.sft import load_tokenizer_and_model

    out = Path(cfg.out)
    if is_finished(out) and not force:
        log.info("%s is already trained (card.json present); skipping", out)
        return out
    if cfg.optim.threads:
        torch.set_num_threads(cfg.optim.threads)
    tok, model = load_tokenizer_and_model(cfg)
    # TRL stops at the tokenizer's eos and model.generation_config.eos_token_id: add the end token SFT
    # taught (with chat, the template's end of an assistant turn), else a correct trace runs on past it
    stops = stop_token_ids(tok, cfg.data.chat)
    have = model.generation_config.eos_token_id
    have = [] if have is None else [have] if isinstance(have, int) else list(have)
    model.generation_config.eos_token_id = have + [i for i in stops if i not in have]
    rows = grpo_rows(cfg.data)
    g = cfg.grpo
    needed = completion_budget(rows, tok)
    if g.max_completion_length < needed:
        raise ValueError(
            f"{cfg.name}: grpo.max_completion_length = {g.max_completion_length} truncates correct traces: the "
            f"longest correct trace of this data (either strategy, with the end token) is {needed} tokens, and a "
            f"truncated correct answer scores 0, which biases GRPO against the longer strategy. Set "
            f"grpo.max_completion_length to at least {needed}, or drop the longest chains from data.steps.")
    work = out / "_work"
    args = GRPOConfig(
        **trainer_kwargs(cfg.optim, cfg.data, str(work)),
        per_device_train_batch_size=g.prompts_per_step * g.num_generations,
        steps_per_generation=1,
        num_generations=g.num_generations,
        temperature=g.temperature,
        beta=g.beta,
        loss_type=g.loss_type,
        max_completion_length=g.max_completion_length,
        log_completions=False,
        use_vllm=g.use_vllm,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=make_reward_func(g.reward),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
    )
    if cfg.optim.keep_every:
        trainer.add_callback(snapshot_callback(out, cfg.optim.keep_every, tok, cfg.name))
    check_end_token(tok, cfg.data.chat, trainer.eos_token_ids, f"{cfg.name}: GRPO (TRL GRPOTrainer)")
    resume = last_checkpoint(work)
    if resume:
        log.info("resuming %s from %s", cfg.name, resume)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    card = {
        "name": cfg.name,
        "stage": "grpo",
        "algorithm": "GRPO (TRL GRPOTrainer)",
        "init": cfg.init,
        "config": cfg.model_dump(),
        "data_hash": data_hash(rows),
        "train_seconds_this_session": round(time.time() - t0, 1),
        "train_runtime": result.metrics.get("train_runtime"),
        "global_step": trainer.state.global_step,
        "log_history": trainer.state.log_history,
    }
    save_final(trainer.model, tok, out, card)
    return out
