"""The causal check on a tiny random Qwen2: the hook adds exactly the vector, where it should,
and a known direction moves the strategy the model picks."""

import numpy as np
import pytest
import torch

from probes.behaviour.generate import first_token_probs
from probes.probing.steering import (
    add_at_prompt_end,
    parse_steering_site,
    steered_first_token,
    steering_dose_response,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prompts(make_twins):
    return [p.prompt for p in make_twins(6, seed=3, steps=(1, 2))]


def _block_inputs(model, enc):
    """Inputs of each block (the residual stream after the previous one), read by pre-hooks
    (transformers' own ``output_hidden_states`` records a block's output before other hooks run)."""
    seen = {}

    def grab(i):
        def pre(module, args, kwargs):
            seen[i] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        return pre

    handles = [layer.register_forward_pre_hook(grab(i), with_kwargs=True) for i, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            logits = model(**enc).logits
    finally:
        for h in handles:
            h.remove()
    return seen, logits


def test_the_hook_adds_the_vector_at_the_last_prompt_token_of_that_layer_only(tiny_qwen2, prompts):
    model, tok = tiny_qwen2
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    v = torch.randn(64)
    base, base_logits = _block_inputs(model, enc)
    with add_at_prompt_end(model, "blocks.0.hook_resid_post", v) as adder:
        adder.prompt_len = enc["input_ids"].shape[1]
        steered, logits = _block_inputs(model, enc)
    # the input of block 1 is resid_post of block 0
    diff = steered[1] - base[1]
    torch.testing.assert_close(diff[:, -1], v.expand(len(prompts), -1), rtol=1e-5, atol=1e-5)
    assert diff[:, :-1].abs().max() == 0
    assert torch.equal(steered[0], base[0])  # upstream of the hook: untouched
    assert (logits - base_logits)[:, :-1].abs().max() == 0  # causal: earlier tokens never see it
    assert (logits - base_logits)[:, -1].abs().max() > 0
    assert adder.calls == 1


def test_resid_pre_of_the_next_layer_is_the_same_intervention_as_resid_post(tiny_qwen2, prompts):
    model, tok = tiny_qwen2
    v = np.random.default_rng(0).normal(size=64).astype(np.float32)
    a = steered_first_token(model, tok, prompts, "blocks.0.hook_resid_post", v)
    b = steered_first_token(model, tok, prompts, "blocks.1.hook_resid_pre", v)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)


def test_a_zero_vector_changes_nothing_and_the_hook_is_gone_after_an_error(tiny_qwen2, prompts):
    model, tok = tiny_qwen2
    pf, _, ld = first_token_probs(model, tok, prompts)
    spf, sld = steered_first_token(model, tok, prompts, "blocks.1.hook_resid_post", np.zeros(64, np.float32))
    np.testing.assert_allclose(spf, pf, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sld, ld, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="boom"):
        with add_at_prompt_end(model, "blocks.1.hook_resid_post", torch.ones(64)):
            raise RuntimeError("boom")
    assert not model.model.layers[1]._forward_hooks
    with pytest.raises(ValueError, match="hook_resid_post"):
        parse_steering_site("blocks.0.hook_mlp_out")
    with pytest.raises(ValueError, match="out of range"):
        with add_at_prompt_end(model, "blocks.5.hook_resid_post", torch.ones(64)):
            pass


def test_steering_along_the_unembedding_difference_flips_the_chosen_strategy(tiny_qwen2, prompts):
    model, tok = tiny_qwen2
    emb = model.get_output_embeddings().weight.detach()
    f_id, b_id = tok.convert_tokens_to_ids("F"), tok.convert_tokens_to_ids("B")
    v = (emb[f_id] - emb[b_id]).numpy()  # at the last block, this direction raises logit(F) - logit(B)
    alphas = [-300.0, 0.0, 300.0]
    res = steering_dose_response(model, tok, prompts, "blocks.1.hook_resid_post", v, alphas, max_new_tokens=4,
                                 n_boot=100, progress=False)
    pf = [r["mean"] for r in res["p_forward"]]
    ld = [r["mean"] for r in res["logit_diff"]]
    assert ld[0] < ld[1] < ld[2] and pf[0] < pf[1] < pf[2]
    assert res["delta_p_forward"][1] == 0.0
    assert res["generated_first_word"][2]["forward"] == 1.0  # greedy generation with the hook held
    assert res["generated_first_word"][0]["backward"] == 1.0
    assert set(res["generated"][1]) == {"forward", "backward", "unparseable"}
    with pytest.raises(ValueError, match="d_model"):
        steering_dose_response(model, tok, prompts, "blocks.1.hook_resid_post", np.ones(3), [1.0], progress=False)
