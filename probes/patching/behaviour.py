"""The behavioural check of a cross-model patch: greedy generation with the patch held at every
step; strategy share and accuracy.

A recovery curve says how far a patch moves one logit. This check says whether it moves what the
model *does*: the recipient generates greedily while, at every decoding step, its activations at
the patched sites and positions are replaced by the donor's on the same text so far:

- ``prompt``: the donor's activations at every prompt token (read once: the prompt does not
  change), so the recipient decides and executes on the donor's reading of the problem (routing);
- ``response``: the donor's activations at every generated token (the donor runs on the text
  generated so far at each step), so the recipient's own reading of the prompt decides and the
  donor's circuits carry the trace (execution);
- ``all``: both.

Each step recomputes the whole sequence (no KV cache), so the patch is applied to every token of
every step exactly as a one-shot patch would apply it. Cost: ``max_new_tokens`` forward passes of
the recipient (and as many of the donor for ``response``/``all``) per batch.

The responses are labelled (:func:`probes.task.label`) and verified (:func:`probes.task.verify`);
:func:`behaviour_summary` gives the forward-strategy share and the accuracy with bootstrap CIs and
their recovery (0 = recipient unpatched, 1 = donor) with 0/1 per-problem metrics.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from activations.batch import TokenBatch
from activations.generation import generate_greedy
from probes.bootstrap import mean_ci
from probes.patching.cells import Cell
from probes.patching.donor import Donor
from probes.patching.recovery import recovery
from probes.patching.sweep import cell_patches
from probes.tasks import TaskProblem as Problem
from probes.tasks import current_task

HELD_POSITIONS: tuple[str, ...] = ("prompt", "response", "all")
"""Where a behavioural patch can be held."""
ZERO_ONE_TOL = 1e-9
"""Gap tolerance for 0/1 per-problem metrics: any problem on which donor and recipient differ is a gap."""


def patched_generate(
    recipient: Any,
    donor: Any | None,
    tokenizer: Any,
    prompts: Sequence[str],
    sites: Sequence[str] = (),
    positions: str = "prompt",
    *,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    desc: str | None = None,
    return_ids: bool = False,
    chat: bool = False,
) -> list[str] | list[list[int]]:
    """Greedy responses of the recipient with the donor's activations held at ``sites`` and
    ``positions`` at every step (no sites or no donor: the recipient alone).

    Args:
        recipient, donor: backends (``donor`` may be None when ``sites`` is empty).
        tokenizer: the shared tokenizer (:func:`activations.batch.stop_token_ids` end a response).
        prompts: ``N`` prompts.
        sites: canonical site names to hold (e.g. ``["blocks.3.hook_resid_post"]``).
        positions: one of :data:`HELD_POSITIONS`.
        max_new_tokens: decoding budget per response.
        batch_size: prompts per batch.
        desc: progress bar label (None: no bar).
        return_ids: return the generated token ids (up to and including ``eos``) instead of text.
        chat: render the prompts in the tokenizer's chat template.

    Returns:
        ``N`` response texts (special tokens removed, words joined by single spaces), or ``N``
        lists of token ids with ``return_ids``.

    Raises:
        ValueError: an unknown ``positions``, or sites without a donor.
    """
    if positions not in HELD_POSITIONS:
        raise ValueError(f"unknown held positions {positions!r}: use one of {list(HELD_POSITIONS)}")
    if sites and donor is None:
        raise ValueError("patched generation with sites needs a donor backend")
    held: dict[int, Any] = {}  # the donor's values on each chunk's prompt, read once per chunk

    def step_patches(batch: TokenBatch, start: int) -> list:
        if not sites:
            return []
        if positions in ("prompt", "all") and start not in held:
            held.clear()
            held[start] = Donor.read(donor, batch, list(sites))  # the first step's batch is the prompt
        if positions == "prompt":
            return cell_patches([Cell(tuple(sites), "prompt")], batch, held[start])
        if batch.has_response[0]:
            return cell_patches([Cell(tuple(sites), positions)], batch, Donor.read(donor, batch, list(sites)))
        if positions == "all":
            return cell_patches([Cell(tuple(sites), "prompt")], batch, held[start])
        return []

    out = generate_greedy(recipient, tokenizer, prompts, step_patches, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, chat=chat, desc=desc, return_ids=return_ids,
                          prompt_only=positions == "prompt")
    return out if return_ids else [" ".join(t.split()) for t in out]


def behaviour_rows(problems: Sequence[Problem], responses: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-problem 0/1 arrays: ``forward``, ``backward``, ``unparseable`` (the label) and
    ``correct`` (the verifier's verdict)."""
    task = current_task()
    labels = [task.label(r) for r in responses]
    return {
        "forward": np.array([x == "forward" for x in labels], dtype=np.float64),
        "backward": np.array([x == "backward" for x in labels], dtype=np.float64),
        "unparseable": np.array([x not in ("forward", "backward") for x in labels], dtype=np.float64),
        "correct": np.array([task.verify(p, r).correct for p, r in zip(problems, responses)], dtype=np.float64),
    }


def behaviour_summary(
    problems: Sequence[Problem],
    recipient: Sequence[str],
    donor: Sequence[str],
    patched: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Strategy shares and accuracy of the three generations, with CIs, and their recoveries.

    Returns:
        ``{"recipient", "donor", "patched"}`` each ``{"forward_share", "backward_share",
        "unparseable_share", "accuracy"}`` as ``{"mean", "ci", "n"}`` (fractions of problems),
        and ``"recovery": {"forward_share", "accuracy"}`` (:class:`Recovery` dicts over 0/1
        per-problem values; undefined when the donor and recipient behave alike on every problem).
    """
    rows = {k: behaviour_rows(problems, v) for k, v in (("recipient", recipient), ("donor", donor), ("patched", patched))}
    out: dict[str, Any] = {}
    for who, r in rows.items():
        out[who] = {f"{k}_share" if k != "correct" else "accuracy": mean_ci(v, n_boot=n_boot, seed=seed)
                    for k, v in r.items()}
    out["recovery"] = {
        name: recovery(rows["patched"][k], rows["recipient"][k], rows["donor"][k], n_boot=n_boot, seed=seed,
                       tol=ZERO_ONE_TOL).to_dict()
        for name, k in (("forward_share", "forward"), ("accuracy", "correct"))
    }
    return out

