"""Attribution patching: its first-order exactness, its agreement measures, and confirmation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from probes.patching.attribution import agreement, attribution_patching, confirm_top_hits, top_cells
from probes.patching.counterfactual import counterfactual_patching, pair_inputs
from probes.patching.donor import Donor
from probes.patching.metrics import StrategyLogitDiff
from probes.patching.sweep import baseline, sweep

from .conftest import N_LAYERS, backend_of

pytestmark = pytest.mark.integration

HOOKS = ["hook_resid_pre", "hook_attn_out", "hook_mlp_out"]


@pytest.fixture(scope="module")
def setting(base, tok, pair_problems):
    pairs = pair_inputs(tok, pair_problems)
    metric = StrategyLogitDiff(tok)
    donor = Donor.read(base, pairs.clean, [f"blocks.*.{h}" for h in HOOKS])
    clean, corrupt = baseline(base, pairs.clean, metric), baseline(base, pairs.corrupt, metric)
    atp = attribution_patching(base, pairs.corrupt, donor, metric, HOOKS, n_positions=pairs.n_positions,
                               recipient=corrupt, donor_values=clean, n_boot=100)
    return pairs, metric, donor, atp


def test_attribution_equals_the_derivative_of_a_small_exact_patch(base_model, tok, pair_problems):
    # float64 weights; Hugging Face's RMSNorm still computes in float32, so the step is not tiny
    # and the difference is central (error O(eps^2)).
    model = copy.deepcopy(base_model).double()
    be = backend_of(model, tok)
    pairs = pair_inputs(tok, pair_problems)
    metric = StrategyLogitDiff(tok)
    sites = [f"blocks.{l}.{h}" for h in HOOKS for l in range(N_LAYERS)]
    donor = Donor.read(be, pairs.clean, sites)
    rec_acts = be.read(pairs.corrupt, sites)
    atp = attribution_patching(be, pairs.corrupt, donor, metric, HOOKS, n_positions=pairs.n_positions,
                               donor_values=baseline(be, pairs.clean, metric), n_boot=20)
    picks = [i for i, c in enumerate(atp.cells) if c.positions in (1, 12, pairs.n_positions - 1)]
    cells = [atp.cells[i] for i in picks]

    def nudged(eps):
        acts = {s: rec_acts[s] + eps * (donor.activations[s] - rec_acts[s]) for s in sites}
        return sweep(be, pairs.corrupt, cells, metric, Donor(pairs.clean, acts), desc=None)

    eps = 1e-2
    derivative = (nudged(eps) - nudged(-eps)) / (2 * eps)
    est = atp.estimates[picks].double()
    assert est.abs().max() > 1e-2
    torch.testing.assert_close(derivative, est, atol=2e-3 * max(1.0, float(est.abs().max())), rtol=1e-2)


def test_attribution_is_zero_where_donor_and_recipient_activations_agree(setting):
    pairs, _, _, atp = setting
    shared = [i for i, lab in enumerate(pairs.position_labels) if "/" not in lab]
    layer0 = atp.estimates[:pairs.n_positions]  # blocks.0.hook_resid_pre: the embeddings
    assert layer0[shared].abs().max() == 0
    assert atp.estimates[:, :].abs().max() > 0


def test_agreement_is_perfect_for_identical_rankings_and_reversed_for_reversed_ones():
    x = np.array([0.9, -0.5, 0.1, 0.05, 0.0, 0.3])
    same = agreement(x, x, k=3)
    assert same["spearman"] == pytest.approx(1.0) and same["top_k_recall"] == 1.0
    assert agreement(-x, x, k=3)["spearman"] == pytest.approx(-1.0)
    # top-k ranks by magnitude: estimates that find 2 of the 3 largest |effects|
    est = np.array([0.9, 0.0, 0.1, 0.05, 0.6, 0.3])
    assert agreement(est, x, k=3)["top_k_recall"] == pytest.approx(2 / 3)


def test_agreement_is_undefined_with_a_reason_for_undefined_cells():
    out = agreement(np.array([np.nan, 1.0]), np.array([0.0, 1.0]))
    assert out["spearman"] is None and out["top_k_recall"] is None and "undefined" in out["reason"]


def test_attribution_ranks_the_cells_of_the_exact_sweep_well_on_a_tiny_model(setting, base, tok, pair_problems):
    pairs, _, _, atp = setting
    hm = counterfactual_patching(base, tok, pair_problems, HOOKS, "denoising", pairs=pairs, n_boot=100)
    exact = np.array([r.value for r in hm.recoveries])
    out = agreement(atp.values(), exact, k=5)
    assert out["n_cells"] == len(HOOKS) * N_LAYERS * pairs.n_positions
    assert out["spearman"] > 0.5


def test_confirmed_top_hits_carry_the_exact_sweep_values(setting, base, tok, pair_problems):
    pairs, metric, donor, atp = setting
    hits = confirm_top_hits(base, pairs.corrupt, donor, metric, atp, k=4, n_boot=100)
    idx = top_cells(atp, 4)
    assert [h["cell"] for h in hits] == [atp.cells[i].label for i in idx]
    hm = counterfactual_patching(base, tok, pair_problems, HOOKS, "denoising", pairs=pairs, n_boot=100)
    for h, i in zip(hits, idx):
        assert h["exact"]["value"] == pytest.approx(hm.recoveries[i].value, abs=1e-5)
        assert h["confirmed"] == (np.sign(h["exact"]["value"]) == np.sign(h["estimate"]) and abs(h["exact"]["value"]) >= 0.05)
