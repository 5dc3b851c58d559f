"""The causal check: add a multiple of a probe direction at the end of the prompt, measure the
strategy the model then chooses (dose-response).

The vector is added through the backend (:class:`activations.backends.Patch` with ``add=True``, the
one way this project reads and writes a model's insides): to the residual stream at the last prompt
token, at the output of block ``l`` (``blocks.{l}.hook_resid_post``) or at its input
(``blocks.{l}.hook_resid_pre``). :func:`steered_first_token` runs one patched forward pass per
batch; :func:`steered_generate` decodes greedily with the vector added at the prompt end of every
step (:func:`activations.generation.generate_greedy`), so it is held for the whole generation.

:func:`steering_dose_response` adds ``alpha * v`` for each ``alpha``, with ``v`` the
difference of the class means ``mu_forward - mu_backward`` at that site (Marks and Tegmark 2023,
arXiv 2310.06824, steer with the mass-mean direction), so ``alpha = 1`` moves the average
backward-choosing activation onto the average forward-choosing one. It reports the mean
``P(F)`` at the first response token, the logit difference ``logit(F) - logit(B)`` (nats) and,
optionally, the shares of forward, backward and unparseable greedy responses.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from activations.sites import BLOCK_SITE_RE
from activations.backends.base import Backend, Patch
from activations.batch import TokenBatch, encode_batch
from activations.generation import generate_greedy
from activations.positions import resolve_positions
from probes.bootstrap import mean_ci
from probes.tasks import UNPARSEABLE, current_task, first_word_strategy, strategy_ids

STEERABLE_HOOKS = ("hook_resid_post", "hook_resid_pre")
"""The sites steering can add a vector at (names from :mod:`activations.sites`)."""


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


def _vectors(vector, n: int) -> torch.Tensor:
    """``vector`` as a float32 tensor: ``[d]`` (every input) or ``[n, d]`` (one per input).

    Raises:
        ValueError: a 2-D vector without one row per input.
    """
    v = torch.as_tensor(np.asarray(vector), dtype=torch.float32)
    if v.ndim == 2 and v.shape[0] != n:
        raise ValueError(f"{v.shape[0]} steering vectors for {n} prompts: give one vector, or one per prompt")
    return v


def prompt_end_patch(backend: Backend, batch: TokenBatch, site: str, vectors: torch.Tensor) -> Patch:
    """The patch that adds ``vectors`` (``[d_model]``, or ``[len(batch), d_model]``: one per input)
    at the prompt end of ``site`` in every input of ``batch``.

    Raises:
        ValueError: an unsupported site, or a layer out of range.
    """
    layer, _ = parse_steering_site(site)
    if not 0 <= layer < backend.dims.n_layers:
        raise ValueError(f"layer {layer} is out of range (the model has {backend.dims.n_layers} layers)")
    at = resolve_positions("prompt_end", batch)
    v = vectors if vectors.ndim == 2 else vectors.expand(len(batch), -1)
    return Patch(site, v.to(backend.device), at=at, add=True)


@torch.no_grad()
def steered_first_token(backend: Backend, prompts: Sequence[str], site: str, vector, batch_size: int = 64,
                        chat: bool = False, progress: bool = False):
    """``(p_forward [n], logit_diff [n])`` at the first response token with ``vector`` (``[d]``, or
    ``[n, d]``: one per prompt) added at the prompt end of ``site`` (probabilities at temperature 1;
    logit difference in nats). ``prompts`` are task prompts (rendered in the checkpoint's chat
    template with ``chat``, which also picks the strategy tokens that follow the generation prompt).

    Raises:
        ValueError: an unsupported site, a layer out of range, or vectors without one row per prompt.
    """
    tok = backend.checkpoint.tokenizer
    f_id, b_id = strategy_ids(tok, current_task(), chat)
    pf, ld = [], []
    vec = _vectors(vector, len(prompts))
    for s in tqdm(range(0, len(prompts), batch_size), desc="steering", disable=not progress, leave=False):
        batch = encode_batch(tok, list(prompts[s:s + batch_size]), padding_side="left", chat=chat)
        v = vec if vec.ndim == 1 else vec[s:s + batch_size]
        at = resolve_positions("prompt_end", batch)
        logits = backend.run(batch, patches=[prompt_end_patch(backend, batch, site, v)], logits=at).logits.float()
        pf.append(logits.softmax(-1)[:, f_id].cpu().numpy())
        ld.append((logits[:, f_id] - logits[:, b_id]).cpu().numpy())
    return np.concatenate(pf), np.concatenate(ld)


def steered_generate(backend: Backend, prompts: Sequence[str], site: str, vector, max_new_tokens: int = 64,
                     batch_size: int = 64, chat: bool = False, progress: bool = False) -> list[str]:
    """Greedy responses with ``vector`` (``[d]``, or ``[n, d]``: one per prompt) added at the prompt
    end of ``site`` at every step. Each response ends at its end token
    (:func:`activations.batch.stop_token_ids`).

    Raises:
        ValueError: as :func:`steered_first_token`.
    """
    vec = _vectors(vector, len(prompts))

    def patches(batch: TokenBatch, start: int) -> list[Patch]:
        v = vec if vec.ndim == 1 else vec[start:start + len(batch)]
        return [prompt_end_patch(backend, batch, site, v)]

    return generate_greedy(backend, backend.checkpoint.tokenizer, prompts, patches, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, chat=chat, desc="steered generation" if progress else None,
                           prompt_only=True)  # the vector sits at the prompt end: a KV-cached prefill holds it


def steering_dose_response(backend: Backend, prompts: Sequence[str], site: str, direction, alphas: Sequence[float],
                           *, generate: bool = True, max_new_tokens: int = 64, batch_size: int = 64,
                           n_boot: int = 1000, seed: int = 0, progress: bool = True, chat: bool = False) -> dict:
    """Dose-response of the strategy to ``alpha * direction`` added at the prompt end of ``site``.

    Args:
        backend: the model, run through its backend (:func:`activations.backends.make_backend`);
            its tokenizer has the strategy words as tokens.
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
    d_model = backend.dims.d_model
    if direction.size != d_model:
        raise ValueError(f"direction has {direction.size} values for d_model {d_model}")
    alphas = [float(a) for a in alphas]
    prompts = list(prompts)
    res = {"site": site, "direction_norm": float(np.linalg.norm(direction)), "alphas": alphas, "n": len(prompts),
           "p_forward": [], "logit_diff": [], "units": {"alpha": "multiples of the direction (mu_F - mu_B)",
                                                        "logit_diff": "nats", "p_forward": "probability"}}
    if generate:
        res["generated"], res["generated_first_word"] = [], []
    n, A = len(prompts), len(alphas)
    # every (dose, prompt) is one input: the doses run in the same batches, one vector per input
    rows = [p for _ in alphas for p in prompts]
    vecs = np.repeat(np.asarray(alphas, dtype=np.float32)[:, None] * direction[None, :], n, axis=0)
    big = max(batch_size, 4 * batch_size)
    # greedy responses at the two extreme doses and 0 only: generation costs tens of forwards per
    # input, and the first-token P(F) at every dose is the headline
    gen_alphas = sorted({min(alphas), max(alphas)} | ({0.0} if 0.0 in alphas else set()))
    gen_k = [alphas.index(a) for a in gen_alphas]
    pf, ld = steered_first_token(backend, rows, site, vecs, big, chat=chat, progress=progress)
    pf, ld = pf.reshape(A, n), ld.reshape(A, n)
    texts = []
    if generate:
        sel = np.concatenate([np.arange(k * n, (k + 1) * n) for k in gen_k])
        texts = steered_generate(backend, [rows[i] for i in sel], site, vecs[sel], max_new_tokens, big,
                                 chat=chat, progress=progress)
    for k in range(A):
        res["p_forward"].append({"mean": float(pf[k].mean()), "ci": list(mean_ci(pf[k], n_boot=n_boot, seed=seed)["ci"])})
        res["logit_diff"].append({"mean": float(ld[k].mean()), "ci": list(mean_ci(ld[k], n_boot=n_boot, seed=seed)["ci"])})
    if generate:
        res["generated_alphas"] = gen_alphas
        task = current_task()
        for j in range(len(gen_k)):
            labs = [task.label(t) for t in texts[j * n:(j + 1) * n]]
            firsts = [first_word_strategy(task, t) for t in texts[j * n:(j + 1) * n]]
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
