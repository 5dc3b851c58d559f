"""Counterfactual patching within one model: layer x position heatmaps of the normalised logit
difference on symmetric pairs.

A pair is a problem (*clean*) and its twin (:meth:`probes.task.problems.Problem.twin`, the
*corrupt* input): the same chain posed as the other type. The two prompts have the same number of
tokens and differ in exactly three words at the same positions (symmetric token replacement,
Heimersheim and Nanda 2024, arXiv 2404.15255, sec. 2), so every position of one has a
counterpart at the same index in the other.

- **denoising**: run the corrupt prompt, patch one (hook, layer, position) from the clean run;
  a cell that restores the clean behaviour is *sufficient*;
- **noising**: run the clean prompt, patch one cell from the corrupt run; a cell that destroys the
  clean behaviour is *necessary*.

The metric is the strategy logit difference at ``prompt_end`` (nats), and every cell is reported
as the normalised logit difference (:mod:`probes.patching.recovery`, with recipient = corrupt and
donor = clean, in both modes): ``0`` = the corrupt run, ``1`` = the clean run. Denoising cells
near 1 and noising cells near 0 are where the problem type is carried to the strategy decision.

The pairs of one heatmap share one position layout (:func:`pair_inputs`: every word takes the
same number of tokens in every prompt, in the clean prompt and in its twin), so that position ``p``
is the same word role in every row; pairs that do not are skipped and counted, never fatal.

Example::

    >>> hm = counterfactual_patching(backend, tok, problems, ["hook_resid_pre"], "denoising")  # doctest: +SKIP
    >>> hm.grid("hook_resid_pre").shape                                                       # doctest: +SKIP
    (4, 19)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from jaxtyping import Float
from torch import Tensor

from activations.batch import TokenBatch, encode_batch
from probes.patching.cells import Cell, grid_cells
from probes.patching.donor import Donor
from probes.patching.metrics import StrategyLogitDiff
from probes.patching.recovery import DEFAULT_TOL, Recovery, recoveries
from probes.patching.sweep import DEFAULT_MAX_ROWS, baseline, sweep
from probes.tasks import TaskProblem as Problem
from probes.tasks import current_task

MODES: tuple[str, ...] = ("denoising", "noising")


class PairError(ValueError):
    """No counterfactual pair that aligns word by word; the message gives the reasons."""


@dataclass
class PairInputs:
    """The clean and corrupt batches of a set of aligned pairs, and their position labels.

    Attributes:
        clean, corrupt: ``N`` prompts each, aligned row by row and position by position.
        n_positions: tokens per prompt (``T``).
        position_labels: ``T`` labels, the clean token, or ``"clean/corrupt"`` where the first pair
            differs (every pair has the same word at each position).
        groups: ``N`` problem ids.
        problems: the ``N`` problems used.
        chat: the prompts are rendered in the chat template.
        requested: the problems asked for.
        skipped: ``{reason: count}`` of the pairs left out (see :func:`pair_inputs`).
    """

    clean: TokenBatch
    corrupt: TokenBatch
    n_positions: int
    position_labels: list[str]
    groups: list[str]
    problems: list[Problem] = field(default_factory=list)
    chat: bool = False
    requested: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """``{"requested", "used", "skipped": {reason: count}, "n_positions"}`` (for results)."""
        return {"requested": self.requested, "used": len(self.groups), "skipped": dict(self.skipped),
                "n_positions": self.n_positions}


SKIP_LENGTH = "the clean prompt and its twin have different token lengths"
SKIP_WORDS = "a token of the clean prompt and its twin's token at the same position belong to different words"
SKIP_LAYOUT = "its words take other numbers of tokens than the heatmap's pairs (another position layout)"


def _word_of_tokens(tokenizer: Any, prompt: str, chat: bool) -> tuple[list[int], list[int | None]]:
    """``(ids, word)``: the ids of the rendered prompt and, per token, the index of the task-prompt
    word its first character lies in (None for the chat template's own tokens)."""
    from activations.batch import render_prompt, tokenize
    from activations.batch import word_char_offsets

    text = render_prompt(tokenizer, prompt, chat)
    base = text.rindex(prompt)
    spans = [(a + base, b + base) for a, b in word_char_offsets(prompt)]
    enc = tokenize(tokenizer, text, chat, return_offsets_mapping=True)
    words: list[int | None] = []
    for a, b in enc["offset_mapping"]:
        a = a if b > a else -1
        hit = next((w for w, (s0, e0) in enumerate(spans) if s0 <= a < e0 or (a < s0 < b)), None)
        words.append(hit)
    return list(enc["input_ids"]), words


def pair_inputs(tokenizer: Any, problems: Sequence[Problem], chat: bool = False) -> PairInputs:
    """Encode the clean prompts of ``problems`` and their twins (in the chat template with ``chat``),
    keeping the pairs that align word by word.

    A pair is aligned when the two prompts have the same token length and every position holds a
    token of the same word in both (the differing words, the type word and the variable names, take
    the same number of tokens). The heatmap needs one position layout: among aligned pairs, those
    whose words take the most common numbers of tokens are kept, so that position ``p`` is the same
    word in every row (with a byte-level BPE tokenizer, numerals differ in length). The rest are
    skipped and counted by reason (:attr:`PairInputs.skipped`); no pair raises.

    Raises:
        PairError: no problems, or no pair survives (the message gives the reasons and counts).
    """
    if not problems:
        raise PairError("counterfactual patching needs at least one problem")
    skipped: dict[str, int] = {}
    kept: list[tuple[Problem, tuple]] = []
    for p in problems:
        ci, cw = _word_of_tokens(tokenizer, p.prompt, chat)
        ti, tw = _word_of_tokens(tokenizer, current_task().twin(p).prompt, chat)
        reason = SKIP_LENGTH if len(ci) != len(ti) else SKIP_WORDS if cw != tw else None
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        kept.append((p, tuple(cw)))
    if kept:
        layouts = [k for _, k in kept]
        best = max(layouts, key=lambda k: (layouts.count(k), -layouts.index(k)))
        n_other = sum(k != best for k in layouts)
        if n_other:
            skipped[SKIP_LAYOUT] = n_other
        kept = [(p, k) for p, k in kept if k == best]
    if not kept:
        raise PairError("no counterfactual pair aligns word by word: " + "; ".join(f"{n} x {r}" for r, n in
                                                                                   skipped.items()))
    used = [p for p, _ in kept]
    keys = [p.id for p in used]
    clean = encode_batch(tokenizer, [p.prompt for p in used], keys=keys, chat=chat)
    corrupt = encode_batch(tokenizer, [current_task().twin(p).prompt for p in used], keys=[current_task().twin(p).id for p in used], chat=chat)
    t = int(clean.lengths[0])
    a = tokenizer.convert_ids_to_tokens(clean.input_ids[0].tolist())
    b = tokenizer.convert_ids_to_tokens(corrupt.input_ids[0].tolist())
    labels = [x if x == y else f"{x}/{y}" for x, y in zip(a, b)]
    return PairInputs(clean=clean, corrupt=corrupt, n_positions=t, position_labels=labels, groups=keys,
                      problems=used, chat=chat, requested=len(problems), skipped=skipped)


@dataclass
class Heatmap:
    """Layer x position normalised logit differences of one model and mode.

    Attributes:
        mode: ``"denoising"`` or ``"noising"``.
        hooks: swept block hooks.
        n_layers, n_positions: the grid's shape per hook.
        position_labels: ``n_positions`` token labels.
        cells: ``K = len(hooks) * n_layers * n_positions`` cells (hook, layer, position order).
        clean, corrupt: ``[N]`` logit differences of the unpatched clean and corrupt runs (nats).
        patched: ``[K, N]`` logit differences of the patched runs (nats).
        recoveries: ``K`` normalised logit differences (0 = corrupt, 1 = clean).
        groups: ``N`` problem ids.
    """

    mode: str
    hooks: list[str]
    n_layers: int
    n_positions: int
    position_labels: list[str]
    cells: list[Cell]
    clean: Float[Tensor, " n"]
    corrupt: Float[Tensor, " n"]
    patched: Float[Tensor, "k n"]
    recoveries: list[Recovery]
    groups: list[str] = field(default_factory=list)

    def grid(self, hook: str, what: str = "value") -> np.ndarray:
        """``[n_layers, n_positions]`` of ``what`` (``value``, ``ci_lo`` or ``ci_hi``) for ``hook``;
        NaN marks an undefined cell *in this array only* (for plotting); results keep None.

        Raises:
            KeyError: a hook that was not swept.
        """
        if hook not in self.hooks:
            raise KeyError(f"hook {hook!r} was not swept; swept: {self.hooks}")
        i = self.hooks.index(hook)
        size = self.n_layers * self.n_positions
        recs = self.recoveries[i * size:(i + 1) * size]

        def pick(r: Recovery) -> float:
            if what == "value":
                return np.nan if r.value is None else r.value
            if r.ci is None:
                return np.nan
            return r.ci[0] if what == "ci_lo" else r.ci[1]

        return np.array([pick(r) for r in recs], dtype=np.float64).reshape(self.n_layers, self.n_positions)

    @property
    def defined(self) -> bool:
        return bool(self.recoveries) and self.recoveries[0].defined

    def to_dict(self) -> dict[str, Any]:
        reason = None if self.defined else (self.recoveries[0].reason if self.recoveries else "no cells")
        return {
            "mode": self.mode,
            "unit": "normalised logit difference (0 = corrupt, 1 = clean)",
            "n": int(self.clean.shape[0]),
            "clean_mean": float(self.clean.mean()),
            "corrupt_mean": float(self.corrupt.mean()),
            "gap_abs": self.recoveries[0].gap_abs if self.recoveries else None,
            "undefined_reason": reason,
            "position_labels": self.position_labels,
            "grids": {h: {k: _nan_to_none(self.grid(h, k)) for k in ("value", "ci_lo", "ci_hi")}
                      for h in self.hooks},
        }


def _nan_to_none(a: np.ndarray) -> list[list[float | None]]:
    return [[None if not np.isfinite(x) else float(x) for x in row] for row in a]


def counterfactual_patching(
    backend: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    hooks: Sequence[str],
    mode: str = "denoising",
    *,
    pairs: PairInputs | None = None,
    tol: float = DEFAULT_TOL,
    n_boot: int = 1000,
    seed: int = 0,
    max_rows: int = DEFAULT_MAX_ROWS,
    batched: bool = True,
    desc: str | None = None,
    chat: bool = False,
) -> Heatmap:
    """A layer x position heatmap of one model on counterfactual pairs (see the module docstring).

    Args:
        backend: the model's backend.
        tokenizer: its tokenizer.
        problems: the clean problems (their twins are the corrupt inputs); those that do not align
            word by word are skipped (:func:`pair_inputs`).
        hooks: block hooks to sweep (``hook_resid_pre``, ``hook_attn_out``, ``hook_mlp_out``...).
        mode: ``"denoising"`` (patch clean into corrupt) or ``"noising"`` (corrupt into clean).
        pairs: :func:`pair_inputs` of the problems when the caller has them already.
        chat: render the prompts in the chat template (when ``pairs`` is not given).
        tol, n_boot, seed, max_rows, batched: as :func:`probes.patching.cmap.cross_model_patching`.

    Raises:
        ValueError: an unknown mode.
        PairError: no pair aligns.
    """
    if mode not in MODES:
        raise ValueError(f"unknown counterfactual mode {mode!r}: use one of {list(MODES)}")
    pairs = pairs or pair_inputs(tokenizer, problems, chat=chat)
    metric = StrategyLogitDiff(tokenizer, chat=pairs.chat)
    n_layers = backend.dims.n_layers
    cells = grid_cells(hooks, n_layers, pairs.n_positions)
    sites = sorted({s for c in cells for s in c.sites})
    recipient_batch, donor_batch = (pairs.corrupt, pairs.clean) if mode == "denoising" else (pairs.clean, pairs.corrupt)
    plan = metric.plan(recipient_batch)
    clean = baseline(backend, pairs.clean, metric)
    corrupt = baseline(backend, pairs.corrupt, metric)
    donor = Donor.read(backend, donor_batch, sites)
    patched = sweep(backend, recipient_batch, cells, metric, donor, batched=batched, max_rows=max_rows,
                    desc=desc or f"counterfactual {mode}", plan=plan)
    recs = recoveries(patched, corrupt, clean, tol=tol, n_boot=n_boot, seed=seed, groups=pairs.groups)
    return Heatmap(mode=mode, hooks=list(hooks), n_layers=n_layers, n_positions=pairs.n_positions,
                   position_labels=pairs.position_labels, cells=cells, clean=clean, corrupt=corrupt,
                   patched=patched, recoveries=recs, groups=pairs.groups)
