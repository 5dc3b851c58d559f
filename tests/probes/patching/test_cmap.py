"""Cross-model patching on pairs of tiny models with known differences."""

from __future__ import annotations

import json

import pytest

from probes.patching.cmap import cmap, cross_model_patching, execution_inputs, routing_inputs

from .conftest import N_LAYERS

pytestmark = pytest.mark.integration


def _values(curve):
    return [r.value for r in curve]


@pytest.mark.parametrize("j", [0, 1])
def test_mlp_out_recovers_fully_at_the_differing_layer_and_nothing_below(base, mlp_variants, tok, problems, j):
    batch, metric = routing_inputs(tok, problems)
    res = cross_model_patching(base, mlp_variants[j], batch, metric, ["hook_mlp_out"], "prompt", n_boot=100)
    v = _values(res.curve("hook_mlp_out"))
    assert res.recoveries[0].gap_abs > 1e-2  # the models do differ
    assert v[j] == pytest.approx(1.0, abs=1e-5)
    assert all(x == pytest.approx(0.0, abs=1e-6) for x in v[:j])
    # above j the donor's MLP output was computed from the donor's own (different) residual
    # stream, so it carries part of the difference but does not restore it
    assert all(abs(x - 1.0) > 1e-2 for x in v[j + 1:])


def test_mlp_out_recovers_nothing_away_from_a_differing_last_layer(base, mlp_variants, tok, problems):
    j = N_LAYERS - 1
    batch, metric = routing_inputs(tok, problems)
    res = cross_model_patching(base, mlp_variants[j], batch, metric, ["hook_mlp_out"], "prompt", n_boot=100)
    assert _values(res.curve("hook_mlp_out")) == pytest.approx([0.0] * j + [1.0], abs=1e-5)


@pytest.mark.parametrize("direction", ["post_into_pre", "pre_into_post"])
def test_resid_post_recovers_nothing_below_j_and_fully_from_j_on(base, mlp_variants, tok, problems, direction):
    j = 1
    batch, metric = routing_inputs(tok, problems)
    res = cmap(base, mlp_variants[j], batch, metric, ["hook_resid_post", "hook_resid_pre"], "prompt", n_boot=100)[direction]
    assert _values(res.curve("hook_resid_post")) == pytest.approx([0.0] * j + [1.0] * (N_LAYERS - j), abs=1e-5)
    # resid_pre of layer l is resid_post of layer l - 1
    assert _values(res.curve("hook_resid_pre")) == pytest.approx([0.0] * (j + 1) + [1.0] * (N_LAYERS - j - 1), abs=1e-5)


def test_execution_curves_have_the_same_exact_structure_when_every_token_is_patched(base, mlp_variants, tok, problems):
    j = 1
    batch, metric, groups = execution_inputs(tok, problems, ["forward", "backward"])
    res = cross_model_patching(base, mlp_variants[j], batch, metric, ["hook_resid_post", "hook_mlp_out"], "all",
                               groups=groups, n_boot=100)
    assert _values(res.curve("hook_resid_post")) == pytest.approx([0.0, 1.0, 1.0], abs=1e-5)
    assert _values(res.curve("hook_mlp_out"))[:2] == pytest.approx([0.0, 1.0], abs=1e-5)
    assert res.to_dict()["metric"]["unit"] == "nats/token"


def test_execution_patch_of_the_trace_alone_recovers_part_of_the_gap(base, mlp_variants, tok, problems):
    # the prompt positions keep the recipient's activations, which the trace attends to
    batch, metric, groups = execution_inputs(tok, problems, ["forward"])
    res = cross_model_patching(base, mlp_variants[1], batch, metric, ["hook_mlp_out"], "response", groups=groups,
                               n_boot=100)
    v = res.at("hook_mlp_out", 1).value
    assert v is not None and 0.05 < v < 0.999


def test_cmap_with_identical_models_is_undefined_never_nan(base, tok, problems):
    batch, metric = routing_inputs(tok, problems)
    curves = cmap(base, base, batch, metric, ["hook_resid_post", "hook_mlp_out"], "prompt", n_boot=50)
    for res in curves.values():
        assert all(r.value is None and r.ci is None and "agree" in r.reason for r in res.recoveries)
        assert (res.patched - res.recipient).abs().max() == 0  # own activations change nothing
        json.dumps(res.to_dict(), allow_nan=False)


def test_curve_lookup_names_the_swept_hooks(base, mlp_variants, tok, problems):
    batch, metric = routing_inputs(tok, problems[:2])
    res = cross_model_patching(base, mlp_variants[0], batch, metric, ["hook_mlp_out"], "prompt_end", n_boot=20)
    assert len(res.curve("hook_mlp_out")) == N_LAYERS
    with pytest.raises(KeyError, match="swept: \\['hook_mlp_out'\\]"):
        res.curve("hook_attn_out")
