"""The mechanistic decomposition: the behavioural terms measured with patched activations."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from probes.patching.mechanistic import (earliest_layer, improvement_terms, patched_behaviour, recovery_curves,
                                         selection_terms, term_recoveries)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
ORGANISM = REPO / "checkpoints" / "organism" / "sft-fb"
RNG = np.random.default_rng(0)


def _arrays(n=12, s=2, k=3):
    pi_r, pi_d = RNG.dirichlet([1, 1, 0.2], size=n)[:, :s], RNG.dirichlet([1, 1, 0.2], size=n)[:, :s]
    a_r, a_d = RNG.uniform(size=(n, s)), RNG.uniform(size=(n, s))
    return pi_r, pi_d, a_r, a_d


def test_terms_are_zero_unpatched_and_the_behavioural_term_at_the_donor():
    pi_r, pi_d, a_r, a_d = _arrays()
    mech, beh = selection_terms(pi_r, pi_d, a_r, a_d, np.stack([pi_r, pi_d, (pi_r + pi_d) / 2]))
    assert np.abs(mech[0]).max() == 0
    assert np.allclose(mech[1], beh) and np.allclose(mech[2], beh / 2)
    mech, beh = improvement_terms(pi_r, pi_d, a_r, a_d, np.stack([a_r, a_d]))
    assert np.abs(mech[0]).max() == 0 and np.allclose(mech[1], beh)


def test_the_behavioural_terms_are_the_shapley_split():
    from probes.behaviour.decompose import decompose

    pi_r, pi_d, a_r, a_d = _arrays()
    _, sel = selection_terms(pi_r, pi_d, a_r, a_d, pi_r[None])
    _, imp = improvement_terms(pi_r, pi_d, a_r, a_d, a_r[None])
    dec = decompose(pi_r, a_r, pi_d, a_d)
    assert np.allclose(sel, dec.selection) and np.allclose(imp, dec.improvement)
    assert np.allclose(sel + imp, dec.delta)


def test_recovery_is_a_ratio_of_means_with_a_ci():
    beh = RNG.normal(0.1, 0.05, size=40)
    recs = term_recoveries(np.stack([0.0 * beh, 0.5 * beh, beh]), beh, n_boot=200)
    assert [round(r.value, 12) for r in recs] == [0.0, 0.5, 1.0]
    assert recs[2].ci[0] <= 1.0 <= recs[2].ci[1] and recs[1].behaviour == pytest.approx(beh.mean())
    assert earliest_layer(recs, 0.4) == 1


def test_no_behavioural_term_gives_undefined_recoveries_not_nan():
    recs = term_recoveries(np.zeros((2, 5)), np.zeros(5), n_boot=50)
    assert all(r.value is None and r.ci is None and "nothing to recover" in r.reason for r in recs)
    assert recs[0].behaviour_ci == (0.0, 0.0)


def test_shapes_are_checked():
    pi_r, pi_d, a_r, a_d = _arrays()
    with pytest.raises(ValueError, match=r"\[K, N, S\]"):
        selection_terms(pi_r, pi_d, a_r, a_d, pi_r)


@pytest.fixture(scope="module")
def pair():
    """The shipped sft-fb and a copy whose layer-2 MLP is perturbed (nothing else differs)."""
    from activations.backends import make_backend
    from activations.load import Checkpoint, load_checkpoint

    ck = load_checkpoint(str(ORGANISM))
    other = copy.deepcopy(ck.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.model.layers[2].mlp.parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.std() * 2.0)
    tok = ck.tokenizer
    return make_backend("nnsight", ck), make_backend("nnsight", Checkpoint.from_model(other, tok)), tok


@pytest.fixture(scope="module")
def few():
    from probes.behaviour.pipeline import held_out_problems

    return held_out_problems(8, 1, (1, 2))


HOOKS = ["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"]


@pytest.fixture(scope="module")
def swept(pair, few):
    pre, post, tok = pair
    return patched_behaviour(pre, post, tok, few, HOOKS, max_rows=64, progress=False)


def test_patches_below_the_only_differing_layer_change_nothing(swept):
    """The models differ only in layer 2's MLP: every site whose value is the same in both (resid
    and attention up to layer 2's input, the MLPs of layers 0-1) patches in what is there."""
    terms = swept.terms()
    same = {"hook_resid_pre": [0, 1, 2], "hook_attn_out": [0, 1, 2], "hook_mlp_out": [0, 1], "hook_resid_post": [0, 1]}
    for i, hook in enumerate(HOOKS):
        for layer in same[hook]:
            cell = i * swept.n_layers + layer
            for term in ("selection", "improvement"):
                assert np.abs(terms[term][0][cell]).max() < 1e-6, (hook, layer, term)
    assert np.abs(swept.pi_patched["prompt"][1] - swept.pi_r).max() < 1e-6


def test_the_last_residual_stream_carries_every_term_when_only_blocks_differ(swept):
    curves = recovery_curves(swept, n_boot=100)
    for term in ("selection", "improvement"):
        last = curves[term]["hook_resid_post"][-1]
        assert last.value == pytest.approx(1.0, abs=1e-4), term
        assert abs(last.behaviour) > 1e-3  # the perturbation moved the behaviour: the test has teeth
    # the differing site: patched at every position that matters for routing (the prompt), it carries it all;
    # patched at the trace only, it leaves layer 3's attention reading the pre-RL prompt: most, not all
    assert curves["selection"]["hook_mlp_out"][2].value == pytest.approx(1.0, abs=1e-4)
    assert 0.9 < curves["improvement"]["hook_mlp_out"][2].value < 1.1
    assert earliest_layer(curves["selection"]["hook_resid_post"], 0.5) == 2


def test_the_unpatched_sweep_reads_the_behaviour_stage_quantities(swept, pair, few):
    from probes.behaviour.exact import trace_logprobs
    from probes.behaviour.generate import first_token_probs

    pre, _, tok = pair
    a = np.exp(trace_logprobs(pre, tok, few))
    pf, pb, _ = first_token_probs(pre.checkpoint.model, tok, [p.prompt for p in few])
    assert np.abs(swept.a_r - a).max() < 1e-5
    assert np.abs(swept.pi_r - np.stack([pf, pb], 1)).max() < 1e-5


@pytest.fixture(scope="module")
def pair_dirs(pair, tmp_path_factory):
    pre, post, tok = pair
    root = tmp_path_factory.mktemp("pair")
    for name, backend in (("pre", pre), ("post", post)):
        backend.checkpoint.model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root / "pre", root / "post"


def _patch(pre, post, out, problems):
    from probes.patching.config import PatchingConfig
    from probes.patching.pipeline import run_patching

    cfg = PatchingConfig(pre=str(pre), post=str(post), out=str(out), hooks=["hook_resid_post", "hook_mlp_out"],
                         routing_positions=["prompt"], counterfactual_n=0, behaviour_n=0, n_boot=100)
    return run_patching(cfg, problems)


def test_swapping_the_pair_negates_the_terms_and_exchanges_the_directions(pair_dirs, few, tmp_path):
    pre, post = pair_dirs
    fwd = _patch(pre, post, tmp_path / "fwd", few)
    rev = _patch(post, pre, tmp_path / "rev", few)
    for k in ("delta", "selection", "improvement"):
        assert rev["behaviour_terms"][k]["mean"] == -fwd["behaviour_terms"][k]["mean"]  # exactly
        assert rev["behaviour_terms"][k]["ci"] == pytest.approx([-x for x in fwd["behaviour_terms"][k]["ci"][::-1]])
    assert abs(fwd["behaviour_terms"]["selection"]["mean"]) > 1e-3  # not vacuous
    assert rev["mechanistic"]["post_into_pre"] == fwd["mechanistic"]["pre_into_post"]
    assert rev["mechanistic"]["pre_into_post"] == fwd["mechanistic"]["post_into_pre"]
    assert fwd["problems"]["cmap"] == [p.id for p in few]
