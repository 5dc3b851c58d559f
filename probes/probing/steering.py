"""The causal check: add a multiple of a probe direction at the end of the prompt, measure the
strategy the model then chooses (dose-response).

:func:`add_at_prompt_end` is a context manager holding a PyTorch forward hook on one decoder
layer of a Hugging Face causal LM (``model.model.layers[l]``; Qwen2, Llama and relatives): it
adds ``vector`` to the residual stream at the last prompt token, at the output of block ``l``
(``blocks.{l}.hook_resid_post``) or at its input (``blocks.{l}.hook_resid_pre``). With left
padding the last prompt token is the last column of the prompt batch; the hook adds at column
``prompt_len - 1`` of every forward that covers it (the prefill of a KV-cached generation, or
every step of an uncached one), so it is held for the whole greedy generation. The hook is
removed on exit, also on error (as baukit's ``Trace`` does). (Transformers' own
``output_hidden_states`` records a block's output through a hook registered before this one, so
it shows the steered block's output *unsteered*; every later block sees the steered stream.)

:func:`steering_dose_response` adds ``alpha * v`` for each ``alpha``, with ``v`` the
difference of the class means ``mu_forward - mu_backward`` at that site (Marks and Tegmark 2023,
arXiv 2310.06824, steer with the mass-mean direction), so ``alpha = 1`` moves the average
backward-choosing activation onto the average forward-choosing one. It reports the mean
``P(F)`` at the first response token, the logit difference ``logit(F) - logit(B)`` (nats) and,
optionally, the shares of forward, backward and unparseable greedy responses.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from activations.sites import BLOCK_SITE_RE
from activations.batch import cut_at_stop, render_prompt, response_token_id, stop_token_ids, tokenize
from probes.bootstrap import mean_ci
from probes.task.traces import STRATEGY_TOKEN
from probes.task.verify import UNPARSEABLE, first_token_strategy, label

STEERABLE_HOOKS = ("hook_resid_post", "hook_resid_pre")
"""The sites steering can add a vector at (names from :mod:`activations.sites`)."""


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of a Hugging Face causal LM (``model.model.layers``).

    Raises:
        AttributeError: the model has no ``model.layers``.
    """
    inner = getattr(model, "model", model)
    if not hasattr(inner, "layers"):
        raise AttributeError(f"{type(model).__name__} has no model.layers: not a decoder-only HF model")
    return inner.layers


def parse_steering_site(site: str) -> tuple[int, str]:
    """``(layer, hook)`` of ``blocks.{l}.hook_resid_post`` or ``blocks.{l}.hook_resid_pre``.

    Raises:
        ValueError: any other site (the message says which are supported).
    """
    m = BLOCK_SITE_RE.match(str(site))
    hook = m.group("hook") if m else None
    if hook not in STEERABLE_HOOKS or not m.group("layer").isdigit():
        raise ValueError(f"steering supports blocks.{{l}}.hook_resid_post and blocks.{{l}}.hook_resid_pre, got {site!r}")
    return int(m.group("layer")), hook


class _PromptEndAdder:
    def __init__(self, vector: torch.Tensor):
        self.vector = vector
        self.prompt_len: int | None = None
        self.calls = 0

    def add(self, h: torch.Tensor) -> torch.Tensor:
        if self.prompt_len is None or h.shape[1] < self.prompt_len:
            return h
        self.calls += 1
        h = h.clone()
        h[:, self.prompt_len - 1] += self.vector.to(h.dtype).to(h.device)  # [d] or one row per input [b, d]
        return h


@contextmanager
def add_at_prompt_end(model, site: str, vector: torch.Tensor | np.ndarray):
    """Hold a hook that adds ``vector`` ``[d_model]`` at the last prompt token of ``site``.

    Yields an object whose ``vector`` may be replaced between calls (``[d_model]``, or
    ``[batch, d_model]``: one vector per input of the next call) and whose ``prompt_len`` must be set to the (left-padded) prompt length of the
    batch before each forward or ``generate`` call (:func:`steered_first_token` and
    :func:`steered_generate` do it); ``calls`` counts the forwards it changed.

    Raises:
        ValueError: an unsupported site, or a layer out of range.
    """
    layer, hook = parse_steering_site(site)
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} is out of range (the model has {len(layers)} layers)")
    adder = _PromptEndAdder(torch.as_tensor(np.asarray(vector), dtype=torch.float32))
    if hook == "hook_resid_post":
        def fwd(module, args, output):
            if isinstance(output, tuple):
                return (adder.add(output[0]),) + tuple(output[1:])
            return adder.add(output)
        handle = layers[layer].register_forward_hook(fwd)
    else:
        def pre(module, args, kwargs):
            if args:
                return (adder.add(args[0]),) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = adder.add(kwargs["hidden_states"])
            return args, kwargs
        handle = layers[layer].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield adder
    finally:
        handle.remove()


def _encode(tokenizer, prompts, device, chat: bool = False):
    old = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return tokenize(tokenizer, list(prompts), chat, return_tensors="pt", padding=True).to(device)
    finally:
        tokenizer.padding_side = old


def _vectors(vector, n: int) -> torch.Tensor:
    """``vector`` as a float32 tensor: ``[d]`` (every input) or ``[n, d]`` (one per input).

    Raises:
        ValueError: a 2-D vector without one row per input.
    """
    v = torch.as_tensor(np.asarray(vector), dtype=torch.float32)
    if v.ndim == 2 and v.shape[0] != n:
        raise ValueError(f"{v.shape[0]} steering vectors for {n} prompts: give one vector, or one per prompt")
    return v


@torch.no_grad()
def steered_first_token(model, tokenizer, prompts: Sequence[str], site: str, vector, batch_size: int = 64,
                        chat: bool = False, progress: bool = False):
    """``(p_forward [n], logit_diff [n])`` at the first response token with ``vector`` (``[d]``, or
    ``[n, d]``: one per prompt) added at the prompt end of ``site`` (probabilities at temperature 1; logit difference in nats).
    ``prompts`` are model inputs (already rendered in the chat template with ``chat``, which
    picks the strategy tokens that follow the generation prompt)."""
    f_id = response_token_id(tokenizer, STRATEGY_TOKEN["forward"], chat)
    b_id = response_token_id(tokenizer, STRATEGY_TOKEN["backward"], chat)
    device = next(model.parameters()).device
    pf, ld = [], []
    vec = _vectors(vector, len(prompts))
    with add_at_prompt_end(model, site, vec[0] if vec.ndim == 1 else vec[:1]) as adder:
        for s in tqdm(range(0, len(prompts), batch_size), desc="steering", disable=not progress, leave=False):
            enc = _encode(tokenizer, prompts[s:s + batch_size], device, chat)
            adder.vector = vec if vec.ndim == 1 else vec[s:s + batch_size]
            adder.prompt_len = enc["input_ids"].shape[1]
            logits = model(**enc).logits[:, -1].float()
            pf.append(logits.softmax(-1)[:, f_id].cpu().numpy())
            ld.append((logits[:, f_id] - logits[:, b_id]).cpu().numpy())
    return np.concatenate(pf), np.concatenate(ld)


@torch.no_grad()
def steered_generate(model, tokenizer, prompts: Sequence[str], site: str, vector, max_new_tokens: int = 64,
                     batch_size: int = 64, chat: bool = False, progress: bool = False) -> list[str]:
    """Greedy responses with ``vector`` (``[d]``, or ``[n, d]``: one per prompt) added at the prompt end of ``site`` (held during the
    whole generation; the prompt's cached keys and values carry it). ``prompts`` are model inputs
    (rendered in the chat template with ``chat``); each response ends at its end token
    (:func:`activations.batch.stop_token_ids`)."""
    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer, chat)
    out: list[str] = []
    vec = _vectors(vector, len(prompts))
    with add_at_prompt_end(model, site, vec[0] if vec.ndim == 1 else vec[:1]) as adder:
        for s in tqdm(range(0, len(prompts), batch_size), desc="steered generation", disable=not progress,
                      leave=False):
            enc = _encode(tokenizer, prompts[s:s + batch_size], device, chat)
            adder.vector = vec if vec.ndim == 1 else vec[s:s + batch_size]
            adder.prompt_len = enc["input_ids"].shape[1]
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, repetition_penalty=1.0,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
            texts = tokenizer.batch_decode([cut_at_stop(g, stops) for g in gen[:, enc["input_ids"].shape[1]:].tolist()],
                                           skip_special_tokens=True)
            out += [t.strip() for t in texts]
    return out


def steering_dose_response(model, tokenizer, prompts: Sequence[str], site: str, direction, alphas: Sequence[float],
                           *, generate: bool = True, max_new_tokens: int = 64, batch_size: int = 64,
                           n_boot: int = 1000, seed: int = 0, progress: bool = True, chat: bool = False) -> dict:
    """Dose-response of the strategy to ``alpha * direction`` added at the prompt end of ``site``.

    Args:
        model, tokenizer: a Hugging Face causal LM and its tokenizer (``F``/``B`` are tokens).
        prompts: ``n`` task prompts (held-out problems).
        site: ``blocks.{l}.hook_resid_post`` or ``blocks.{l}.hook_resid_pre``.
        direction: ``[d_model]`` the vector added at ``alpha = 1`` (activation units; use the
            difference of class means ``mu_forward - mu_backward``).
        alphas: the doses (include 0 for the unsteered model).
        generate: also generate greedy responses at the extreme doses and 0 and label their strategy.
        max_new_tokens: generation budget, in tokens.
        chat: render the prompts in the tokenizer's chat template
            (:func:`activations.batch.render_prompt`).

    Returns:
        ``{"site", "direction_norm", "alphas", "p_forward": [{"mean", "ci"}], "logit_diff":
        [{"mean", "ci"}], "delta_p_forward": [float] (vs alpha = 0, or vs the first alpha when 0
        is absent) and "delta_p_forward_ci" (paired per prompt), "dpf_per_dose": {"mean", "ci",
        "units"} (the causal headline: the change of P(F) per unit of dose), "generated":
        [{"forward", "backward", "unparseable"}] at each of "generated_alphas" (the smallest and
        largest dose and 0), shares of the greedy responses labelled by the full trace grammar and "generated_first_word": the same by the
        first word alone (with ``generate``), "n": n}``.

    Raises:
        ValueError: an unsupported site or a direction of the wrong width.
    """
    direction = np.asarray(direction, dtype=np.float32).reshape(-1)
    d_model = decoder_layers(model)[0].self_attn.o_proj.out_features if hasattr(decoder_layers(model)[0], "self_attn") else None
    if d_model is not None and direction.size != d_model:
        raise ValueError(f"direction has {direction.size} values for d_model {d_model}")
    alphas = [float(a) for a in alphas]
    prompts = [render_prompt(tokenizer, p, chat) for p in prompts]
    res = {"site": site, "direction_norm": float(np.linalg.norm(direction)), "alphas": alphas, "n": len(prompts),
           "p_forward": [], "logit_diff": [], "units": {"alpha": "multiples of the direction (mu_F - mu_B)",
                                                        "logit_diff": "nats", "p_forward": "probability"}}
    if generate:
        res["generated"], res["generated_first_word"] = [], []
    was_training = model.training
    model.eval()
    n, A = len(prompts), len(alphas)
    # every (dose, prompt) is one input: the doses run in the same batches, one vector per input
    rows = [p for _ in alphas for p in prompts]
    vecs = np.repeat(np.asarray(alphas, dtype=np.float32)[:, None] * direction[None, :], n, axis=0)
    big = max(batch_size, 4 * batch_size)
    # greedy responses at the two extreme doses and 0 only: generation costs tens of forwards per
    # input, and the first-token P(F) at every dose is the headline
    gen_alphas = sorted({min(alphas), max(alphas)} | ({0.0} if 0.0 in alphas else set()))
    gen_k = [alphas.index(a) for a in gen_alphas]
    try:
        pf, ld = steered_first_token(model, tokenizer, rows, site, vecs, big, chat=chat, progress=progress)
        pf, ld = pf.reshape(A, n), ld.reshape(A, n)
        texts = []
        if generate:
            sel = np.concatenate([np.arange(k * n, (k + 1) * n) for k in gen_k])
            texts = steered_generate(model, tokenizer, [rows[i] for i in sel], site, vecs[sel], max_new_tokens, big,
                                     chat=chat, progress=progress)
    finally:
        model.train(was_training)
    for k in range(A):
        res["p_forward"].append({"mean": float(pf[k].mean()), "ci": list(mean_ci(pf[k], n_boot=n_boot, seed=seed)["ci"])})
        res["logit_diff"].append({"mean": float(ld[k].mean()), "ci": list(mean_ci(ld[k], n_boot=n_boot, seed=seed)["ci"])})
    if generate:
        res["generated_alphas"] = gen_alphas
        for j in range(len(gen_k)):
            labs = [label(t) for t in texts[j * n:(j + 1) * n]]
            firsts = [first_token_strategy(t) for t in texts[j * n:(j + 1) * n]]
            res["generated"].append({s: labs.count(s) / len(labs) for s in ("forward", "backward", UNPARSEABLE)})
            res["generated_first_word"].append(
                {s: firsts.count(s) / len(firsts) for s in ("forward", "backward", UNPARSEABLE)})
    k0 = alphas.index(0.0) if 0.0 in alphas else 0
    base_pf = float(pf[k0].mean())
    # the headline causal number: the change of P(F) per unit of dose, per prompt the least-squares
    # slope over the doses, then its mean over prompts with a bootstrap CI
    if A >= 2:
        a = np.asarray(alphas) - np.mean(alphas)
        slopes = (a[:, None] * (pf - pf.mean(0, keepdims=True))).sum(0) / (a**2).sum()
        res["dpf_per_dose"] = {"mean": float(slopes.mean()), "ci": list(mean_ci(slopes, n_boot=n_boot, seed=seed)["ci"]),
                               "units": "probability per multiple of mu_F - mu_B (least-squares slope over the doses, "
                                        "per prompt, mean over prompts)"}
    res["delta_p_forward_ci"] = [list(mean_ci(pf[k] - pf[k0], n_boot=n_boot, seed=seed)["ci"]) for k in range(A)]
    res["delta_p_forward"] = [r["mean"] - base_pf for r in res["p_forward"]]
    return res
