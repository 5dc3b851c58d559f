"""Greedy generation with a patch held at every step, and the behaviour summary."""

from __future__ import annotations

import pytest

from probes.behaviour.generate import generate
from probes.patching.behaviour import behaviour_summary, patched_generate
from probes.task import make_trace

from .conftest import N_LAYERS

pytestmark = pytest.mark.integration

LAST = f"blocks.{N_LAYERS - 1}.hook_resid_post"
KW = dict(max_new_tokens=6, batch_size=8)


@pytest.fixture(scope="module")
def prompts(problems):
    return [p.prompt for p in problems[:3]]


@pytest.fixture(scope="module")
def own(base, tok, prompts):
    return patched_generate(base, None, tok, prompts, **KW)


def test_the_unpatched_loop_generates_what_hugging_face_greedy_generation_does(base_model, tok, prompts, own):
    hf = generate(base_model, tok, prompts, greedy=True, max_new_tokens=KW["max_new_tokens"])
    assert own == hf
    assert len(set(own)) > 1


@pytest.mark.parametrize("positions", ["prompt", "response", "all"])
def test_holding_the_models_own_activations_changes_no_token(base, tok, prompts, own, positions):
    sites = ["blocks.0.hook_mlp_out", "blocks.1.hook_resid_post"]
    assert patched_generate(base, base, tok, prompts, sites, positions, **KW) == own


def test_holding_the_donors_last_residual_everywhere_generates_the_donors_text(base, blocks_donor, tok, prompts, own):
    donor_text = patched_generate(blocks_donor, None, tok, prompts, **KW)
    assert donor_text != own
    assert patched_generate(base, blocks_donor, tok, prompts, [LAST], "all", **KW) == donor_text


def test_holding_the_donors_prompt_changes_the_first_token_to_the_donors(base, blocks_donor, tok, prompts, own):
    # the first response token is predicted at prompt_end, a prompt position
    kw = dict(KW, return_ids=True)
    mine = patched_generate(base, None, tok, prompts, **kw)
    donor_ids = patched_generate(blocks_donor, None, tok, prompts, **kw)
    patched = patched_generate(base, blocks_donor, tok, prompts, [LAST], "prompt", **kw)
    assert [t[0] for t in mine] != [t[0] for t in donor_ids]
    assert [t[0] for t in patched] == [t[0] for t in donor_ids]


def test_behaviour_summary_reads_strategy_and_accuracy_off_the_texts(problems):
    ps = problems[:4]
    good = [make_trace(p, "forward") for p in ps]
    back = [make_trace(p, "backward") for p in ps]
    bad = ["F x = ? ; ans ?"] * len(ps)
    s = behaviour_summary(ps, recipient=back, donor=good, patched=good[:2] + bad[2:], n_boot=100)
    assert s["donor"]["forward_share"]["mean"] == 1.0 and s["donor"]["accuracy"]["mean"] == 1.0
    assert s["recipient"]["backward_share"]["mean"] == 1.0 and s["recipient"]["accuracy"]["mean"] == 1.0
    assert s["patched"]["accuracy"]["mean"] == 0.5 and s["patched"]["unparseable_share"]["mean"] == 0.5
    assert s["recovery"]["forward_share"]["value"] == pytest.approx(0.5)
    assert s["recovery"]["accuracy"]["value"] is None  # both are always right: nothing to recover


def test_unknown_held_positions_are_refused(base, tok, prompts):
    with pytest.raises(ValueError, match="prompt"):
        patched_generate(base, base, tok, prompts, [LAST], "steps", **KW)
