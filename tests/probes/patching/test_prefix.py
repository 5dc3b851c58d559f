"""Prefix reuse gives the numbers of one full patched forward pass per cell."""

from __future__ import annotations

import copy

import pytest
import torch

from activations.batch import encode_batch
from probes.patching import prefix
from probes.patching.cells import Cell, grid_cells
from probes.patching.counterfactual import pair_inputs
from probes.patching.donor import Donor
from probes.patching.metrics import StepLogProb, StrategyLogitDiff
from probes.patching.sweep import baseline, sweep
from probes.task import make_trace, sample_problems

from .conftest import N_LAYERS, backend_of

pytestmark = pytest.mark.integration


def _sweeps(backend, batch, cells, metric, donor):
    looped = sweep(backend, batch, cells, metric, donor, batched=False, desc=None)
    fast = prefix.prefix_sweep(backend, batch, cells, metric.plan(batch), donor, max_rows=64, span=3)
    auto = sweep(backend, batch, cells, metric, donor, desc=None)
    return looped, fast, auto


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_prefix_reuse_equals_one_forward_per_patch_on_counterfactual_pairs(base_model, tok, pair_problems, kernel):
    model = copy.deepcopy(base_model)
    model.config._attn_implementation = kernel
    be = backend_of(model, tok)
    pairs = pair_inputs(tok, pair_problems)
    metric = StrategyLogitDiff(tok)
    donor = Donor.read(be, pairs.clean, ["blocks.*.hook_resid_pre"])
    cells = grid_cells(["hook_resid_pre"], N_LAYERS, pairs.n_positions)
    looped, fast, auto = _sweeps(be, pairs.corrupt, cells, metric, donor)
    assert (looped - baseline(be, pairs.corrupt, metric)).abs().max() > 1e-2
    assert (fast - looped).abs().max() <= 1e-5
    assert (auto - looped).abs().max() <= 1e-5


def test_prefix_reuse_equals_one_forward_per_patch_for_a_metric_read_at_many_tokens(base, blocks_donor, tok):
    problems = sample_problems(3, seed=2, types=("evaluation",), steps=(2,))
    prompts, responses = [p.prompt for p in problems], [make_trace(p, "forward") for p in problems]
    batch = encode_batch(tok, prompts, responses)
    assert bool((batch.attention_mask == 1).all())  # one length: no padding
    metric = StepLogProb(tok, prompts, responses)
    donor = Donor.read(blocks_donor, batch, ["blocks.*.hook_resid_pre"])
    cells = grid_cells(["hook_resid_pre"], N_LAYERS, batch.seq_len)
    looped, fast, auto = _sweeps(base, batch, cells, metric, donor)
    assert (looped - baseline(base, batch, metric)).abs().max() > 1e-2
    assert (fast - looped).abs().max() <= 1e-5 and (auto - looped).abs().max() <= 1e-5


def test_patches_that_write_the_values_already_there_give_the_clean_value_exactly(base, tok, pair_problems):
    pairs = pair_inputs(tok, pair_problems)
    metric = StrategyLogitDiff(tok)
    donor = Donor.read(base, pairs.clean, ["blocks.0.hook_resid_pre"])
    shared = [p for p, lab in enumerate(pairs.position_labels) if "/" not in lab]
    cells = [Cell(("blocks.0.hook_resid_pre",), p) for p in shared]
    fast = prefix.prefix_sweep(base, pairs.corrupt, cells, metric.plan(pairs.corrupt), donor)
    clean = baseline(base, pairs.corrupt, metric)
    assert torch.allclose(fast, clean[None].expand_as(fast), atol=1e-6, rtol=0)


def test_padded_batches_fall_back_to_the_backend_and_still_agree(base, blocks_donor, tok, problems):
    batch = encode_batch(tok, [p.prompt for p in problems])
    assert "padded" in prefix.unsupported_reason(base, batch)
    metric = StrategyLogitDiff(tok)
    donor = Donor.read(blocks_donor, batch, ["blocks.*.hook_resid_pre"])
    cells = grid_cells(["hook_resid_pre"], N_LAYERS, 4)
    looped = sweep(base, batch, cells, metric, donor, batched=False, desc=None)
    assert (sweep(base, batch, cells, metric, donor, desc=None) - looped).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="padded"):
        prefix.prefix_sweep(base, batch, cells, metric.plan(batch), donor)


def test_only_single_resid_pre_sites_at_one_token_are_eligible():
    assert prefix.eligible(Cell(("blocks.1.hook_resid_pre",), 3))
    assert not prefix.eligible(Cell(("blocks.1.hook_resid_pre",), "prompt"))
    assert not prefix.eligible(Cell(("blocks.1.hook_mlp_out",), 3))
    assert not prefix.eligible(Cell(("blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre"), 3))
