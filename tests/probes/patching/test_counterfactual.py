"""Counterfactual (eval <-> inv) patching within one model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probes.patching.counterfactual import PairError, counterfactual_patching, pair_inputs
from probes.task import sample_problems

from .conftest import N_LAYERS

pytestmark = pytest.mark.integration


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


def test_pairs_of_another_position_layout_are_skipped_and_counted(tok):
    from probes.patching.counterfactual import SKIP_LAYOUT

    mixed = sample_problems(6, seed=1, steps=(2, 3))
    assert len({p.steps for p in mixed}) == 2
    pairs = pair_inputs(tok, mixed)
    assert pairs.summary()["requested"] == 6 and len(pairs.groups) + pairs.skipped[SKIP_LAYOUT] == 6
    assert len({p.steps for p in pairs.problems}) == 1 and set(pairs.clean.lengths.tolist()) == {pairs.n_positions}


def _bpe(split_word):
    from tests.conftest import qwen_like_tokenizer, without_merges

    return without_merges(qwen_like_tokenizer(vocab_size=310), split_word)


def test_a_word_split_into_more_tokens_skips_its_pairs_instead_of_stopping_the_stage():
    """Issue 19: with ' li' three tokens and ' ke' one, prompts of one chain length differ in
    length; the pairs of the most common layout are kept, each position one word in every row."""
    from probes.patching.counterfactual import SKIP_LAYOUT, _word_of_tokens

    tok = _bpe("li")
    assert len(tok(" li")["input_ids"]) == 3 and len(tok(" ke")["input_ids"]) == 1
    problems = sample_problems(24, seed=1, steps=(3,))
    pairs = pair_inputs(tok, problems)
    assert 0 < len(pairs.groups) < 24 and pairs.skipped == {SKIP_LAYOUT: 24 - len(pairs.groups)}
    layouts = {tuple(_word_of_tokens(tok, p.prompt, False)[1]) for p in pairs.problems}
    assert len(layouts) == 1  # position p is the same word of the prompt in every row
    assert all(" li " not in p.prompt + " " for p in pairs.problems) or all(" li " in p.prompt + " " for p in
                                                                                pairs.problems)


def test_pairs_whose_words_do_not_line_up_are_counted_and_the_patching_stage_goes_on(tmp_path):
    """' y' two tokens and ' x' one: an evaluation prompt ('x = .. ; y = ?') and its twin
    ('y = .. ; x = ?') have equal lengths but their words sit at other positions."""
    from probes.patching.config import PatchingConfig
    from probes.patching.counterfactual import SKIP_WORDS
    from probes.patching.pipeline import run_patching
    from probes.train.config import ModelConfig
    from probes.train.model import build_model

    tok = _bpe("y")
    problems = sample_problems(8, seed=1, steps=(3,))
    with pytest.raises(PairError, match=f"8 x {SKIP_WORDS}"):
        pair_inputs(tok, problems)
    for name, seed in (("pre", 0), ("post", 1)):
        build_model(ModelConfig(layers=2, d_model=32, heads=4, kv_heads=2, d_mlp=64), tok, seed=seed) \
            .save_pretrained(str(tmp_path / name))
        tok.save_pretrained(str(tmp_path / name))
    cfg = PatchingConfig(pre=str(tmp_path / "pre"), post=str(tmp_path / "post"), out=str(tmp_path / "out"),
                         hooks=["hook_resid_post"], counterfactual_n=8, behaviour_n=0, n_boot=20)
    res = run_patching(cfg, problems)
    assert res["counterfactual"] == {} and res["problems"]["counterfactual"] == []
    assert "8 x " + SKIP_WORDS in res["counterfactual_pairs"]["skipped_because"]
    assert res["verdict"]["label"] in ("selection", "improvement", "both", "neither")


def test_unknown_mode_is_refused(base, tok, pair_problems):
    with pytest.raises(ValueError, match="denoising"):
        counterfactual_patching(base, tok, pair_problems, ["hook_resid_pre"], "ablation")
