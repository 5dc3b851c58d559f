"""Counterfactual (eval <-> inv) patching within one model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probes.patching.counterfactual import PairError, counterfactual_patching, pair_inputs
from probes.task import sample_problems

from .conftest import N_LAYERS


@pytest.fixture(scope="module")
def maps(base, tok, pair_problems):
    hooks = ["hook_resid_pre", "hook_resid_post"]
    return {m: counterfactual_patching(base, tok, pair_problems, hooks, m, n_boot=100) for m in ("denoising", "noising")}


def test_pairs_align_and_differ_in_exactly_three_positions(tok, pair_problems):
    pairs = pair_inputs(tok, pair_problems)
    differ = (pairs.clean.input_ids != pairs.corrupt.input_ids).sum(1)
    assert differ.tolist() == [3] * len(pair_problems)
    assert sum("/" in x for x in pairs.position_labels) == 3
    assert pairs.position_labels[1] in ("eval/inv", "inv/eval")


def test_denoising_the_last_residual_at_prompt_end_restores_the_clean_run(maps):
    hm = maps["denoising"]
    last = hm.grid("hook_resid_post")[N_LAYERS - 1]
    assert last[-1] == pytest.approx(1.0, abs=1e-5)
    assert np.abs(last[:-1]).max() < 1e-5  # other positions of the last layer cannot reach prompt_end


def test_noising_the_last_residual_at_prompt_end_gives_the_corrupt_run(maps):
    last = maps["noising"].grid("hook_resid_post")[N_LAYERS - 1]
    assert last[-1] == pytest.approx(0.0, abs=1e-5)
    assert np.abs(last[:-1] - 1.0).max() < 1e-5


def test_embeddings_of_shared_tokens_change_nothing(maps, tok, pair_problems):
    labels = pair_inputs(tok, pair_problems).position_labels
    layer0 = maps["denoising"].grid("hook_resid_pre")[0]
    shared = np.array(["/" not in x for x in labels])
    assert np.abs(layer0[shared]).max() < 1e-6
    assert np.abs(layer0[~shared]).max() > 1e-2


def test_heatmap_results_are_strict_json_with_units(maps):
    d = maps["denoising"].to_dict()
    text = json.dumps(d, allow_nan=False)
    assert "0 = corrupt, 1 = clean" in d["unit"]
    assert len(d["grids"]["hook_resid_pre"]["value"]) == N_LAYERS and "NaN" not in text


def test_pairs_of_different_lengths_are_refused(tok):
    mixed = sample_problems(6, seed=1, steps=(2, 3))
    assert len({p.steps for p in mixed}) == 2
    with pytest.raises(PairError, match="one token length"):
        pair_inputs(tok, mixed)


def test_unknown_mode_is_refused(base, tok, pair_problems):
    with pytest.raises(ValueError, match="denoising"):
        counterfactual_patching(base, tok, pair_problems, ["hook_resid_pre"], "ablation")
