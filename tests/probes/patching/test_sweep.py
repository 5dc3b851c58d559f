"""Exact properties of patching on tiny random Qwen2 models, and batched sweeps = looped sweeps."""

from __future__ import annotations

import pytest
import torch

from activations.backends import Patch
from activations.batch import encode_batch
from probes.patching.cells import Cell, CellError, grid_cells, layer_cells
from probes.patching.cmap import execution_inputs, routing_inputs
from probes.patching.donor import Donor, DonorError
from probes.patching.sweep import SweepError, baseline, cell_patches, repeat_batch, sweep

from .conftest import N_LAYERS

pytestmark = pytest.mark.integration

ALL_SITES = ["hook_embed"] + [f"blocks.{l}.{h}" for l in range(N_LAYERS) for h in
                              ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
                               "hook_mlp_out", "hook_resid_post")]


def test_patching_a_model_with_its_own_activations_changes_nothing(base, tok, problems):
    batch, _, _ = execution_inputs(tok, problems[:3], ["forward"])
    clean = base.run(batch, logits=True).logits
    own = Donor.read(base, batch, ALL_SITES)
    # every site at every position at once, and each site alone
    every = base.run(batch, patches=cell_patches([Cell(tuple(ALL_SITES), "all")], batch, own), logits=True).logits
    torch.testing.assert_close(every, clean, atol=1e-6, rtol=0)
    for site in ALL_SITES:
        one = base.run(batch, patches=cell_patches([Cell((site,), "all")], batch, own), logits=True).logits
        if site.endswith("hook_resid_mid"):  # written as attn_out := value - resid_pre (1 ulp)
            torch.testing.assert_close(one, clean, atol=1e-6, rtol=0)
        else:
            assert torch.equal(one, clean), site


def test_patching_every_position_of_the_last_resid_post_gives_the_donor_logits(base, blocks_donor, tok, problems):
    last = f"blocks.{N_LAYERS - 1}.hook_resid_post"
    for batch in (routing_inputs(tok, problems)[0], execution_inputs(tok, problems, ["backward"])[0]):
        donor_logits = blocks_donor.run(batch, logits=True).logits
        recipient_logits = base.run(batch, logits=True).logits
        donor = Donor.read(blocks_donor, batch, [last])
        patched = base.run(batch, patches=cell_patches([Cell((last,), "all")], batch, donor), logits=True).logits
        mask = batch.attention_mask.bool()
        assert (donor_logits - recipient_logits)[mask].abs().max() > 0.1  # the models do differ
        torch.testing.assert_close(patched[mask], donor_logits[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["routing", "execution"])
def test_batched_sweeps_equal_looped_sweeps(base, blocks_donor, tok, problems, kind):
    if kind == "routing":
        batch, metric = routing_inputs(tok, problems)
        cells = layer_cells(["hook_resid_pre", "hook_mlp_out"], N_LAYERS, "prompt") + [
            Cell(("blocks.1.attn.hook_z", "blocks.2.hook_resid_mid"), "prompt_end"), Cell(("blocks.0.hook_attn_out",), 4)]
    else:
        batch, metric, _ = execution_inputs(tok, problems, ["forward", "backward"])
        cells = layer_cells(["hook_resid_post", "hook_attn_out"], N_LAYERS, "response") + [
            Cell(("blocks.1.hook_resid_pre",), "steps"), Cell(("blocks.2.hook_mlp_out",), "all")]
    sites = sorted({s for c in cells for s in c.sites})
    donor = Donor.read(blocks_donor, batch, sites)
    looped = sweep(base, batch, cells, metric, donor, batched=False, desc=None)
    rec = baseline(base, batch, metric)
    for max_rows in (2 * len(batch) + 1, 10_000):  # uneven chunks, and one forward for all cells
        batched = sweep(base, batch, cells, metric, donor, max_rows=max_rows, desc=None)
        assert batched.shape == (len(cells), len(batch))
        assert (batched - looped).abs().max() <= 1e-5
    assert (looped - rec).abs().max() > 1e-2  # the patches do something


def test_a_token_index_beyond_an_input_leaves_that_input_unpatched(base, blocks_donor, tok, problems):
    batch, metric = routing_inputs(tok, problems)
    short = int(batch.lengths.min())
    assert int(batch.lengths.max()) > short  # mixed lengths
    donor = Donor.read(blocks_donor, batch, ["blocks.1.hook_resid_pre"])
    got = sweep(base, batch, [Cell(("blocks.1.hook_resid_pre",), short)], metric, donor, desc=None)[0]
    rec = baseline(base, batch, metric)
    beyond = batch.lengths <= short
    assert torch.equal(got[beyond], rec[beyond])
    assert (got[~beyond] - rec[~beyond]).abs().max() > 1e-4


def test_sweep_of_a_grid_has_one_row_per_cell_in_hook_layer_position_order(base, tok, pair_problems):
    batch, metric = routing_inputs(tok, pair_problems)
    cells = grid_cells(["hook_resid_pre", "hook_mlp_out"], N_LAYERS, 3)
    assert [c.label for c in cells[:4]] == ["blocks.0.hook_resid_pre@0", "blocks.0.hook_resid_pre@1",
                                            "blocks.0.hook_resid_pre@2", "blocks.1.hook_resid_pre@0"]
    assert len(cells) == 2 * N_LAYERS * 3


def test_repeat_batch_keeps_each_copys_rows_identical(tok, problems):
    batch = encode_batch(tok, [p.prompt for p in problems])
    rep = repeat_batch(batch, 3)
    n = len(batch)
    assert len(rep) == 3 * n and torch.equal(rep.input_ids[2 * n:], batch.input_ids)
    assert torch.equal(rep.pad_offset[n:2 * n], batch.pad_offset)


def test_sweep_errors_name_the_problem(base, tok, problems):
    batch, metric = routing_inputs(tok, problems)
    donor = Donor.read(base, batch, ["blocks.0.hook_resid_pre"])
    with pytest.raises(DonorError, match="did not read"):
        sweep(base, batch, [Cell(("blocks.1.hook_resid_pre",), "prompt")], metric, donor, desc=None)
    with pytest.raises(CellError, match="teacher-forced response"):
        sweep(base, batch, [Cell(("blocks.0.hook_resid_pre",), "response")], metric, donor, desc=None)
    with pytest.raises(CellError, match="unknown positions"):
        Cell(("blocks.0.hook_resid_pre",), "everywhere")
    other = Donor.read(base, routing_inputs(tok, problems[:2])[0], ["blocks.0.hook_resid_pre"])
    with pytest.raises(SweepError, match="donor run has 2 inputs"):
        sweep(base, batch, [Cell(("blocks.0.hook_resid_pre",), "prompt")], metric, other, desc=None)
    with pytest.raises(Exception, match="shape"):
        base.run(batch, patches=[Patch("blocks.0.hook_resid_pre", torch.zeros(3, 7))], logits=True)
