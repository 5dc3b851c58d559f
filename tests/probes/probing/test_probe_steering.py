"""The causal check on a tiny random Qwen2: the backend adds exactly the vector, where it should,
and a known direction moves the strategy the model picks."""

import numpy as np
import pytest
import torch

from activations.backends import make_backend
from activations.batch import cut_at_stop, encode_batch, stop_token_ids
from activations.load import Checkpoint
from probes.behaviour.generate import first_token_probs
from probes.probing.steering import (
    parse_steering_site,
    prompt_end_patch,
    steered_first_token,
    steered_generate,
    steering_dose_response,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prompts(make_twins):
    return [p.prompt for p in make_twins(6, seed=3, steps=(1, 2))]


@pytest.fixture(scope="module")
def backend(tiny_qwen2):
    model, tok = tiny_qwen2
    return make_backend("nnsight", Checkpoint.from_model(model, tok))


def test_the_patch_adds_the_vector_at_the_last_prompt_token_of_that_layer_only(backend, prompts):
    batch = encode_batch(backend.checkpoint.tokenizer, prompts, padding_side="left")
    v = torch.randn(64)
    sites = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    base = backend.run(batch, read=sites, logits=True)
    steered = backend.run(batch, read=sites, logits=True,
                          patches=[prompt_end_patch(backend, batch, "blocks.0.hook_resid_post", v)])
    # the input of block 1 is resid_post of block 0
    diff = steered.activations[sites[1]] - base.activations[sites[1]]
    torch.testing.assert_close(diff[:, -1], v.expand(len(prompts), -1), rtol=1e-5, atol=1e-5)
    assert diff[:, :-1].abs().max() == 0
    assert torch.equal(steered.activations[sites[0]], base.activations[sites[0]])  # upstream: untouched
    assert (steered.logits - base.logits)[:, :-1].abs().max() == 0  # causal: earlier tokens never see it
    assert (steered.logits - base.logits)[:, -1].abs().max() > 0


def test_resid_pre_of_the_next_layer_is_the_same_intervention_as_resid_post(backend, prompts):
    v = np.random.default_rng(0).normal(size=64).astype(np.float32)
    a = steered_first_token(backend, prompts, "blocks.0.hook_resid_post", v)
    b = steered_first_token(backend, prompts, "blocks.1.hook_resid_pre", v)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)


def test_a_zero_vector_changes_nothing_and_bad_sites_are_refused(tiny_qwen2, backend, prompts):
    model, tok = tiny_qwen2
    pf, _, ld = first_token_probs(model, tok, prompts)
    spf, sld = steered_first_token(backend, prompts, "blocks.1.hook_resid_post", np.zeros(64, np.float32))
    np.testing.assert_allclose(spf, pf, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sld, ld, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="hook_resid_post"):
        parse_steering_site("blocks.0.hook_mlp_out")
    with pytest.raises(ValueError, match="out of range"):
        steered_first_token(backend, prompts, "blocks.5.hook_resid_post", np.ones(64, np.float32))


def test_steered_generation_holds_the_vector_like_a_kv_cached_hook(tiny_qwen2, backend, prompts):
    """Greedy decoding through the backend (re-run each step, the vector added at the prompt end)
    gives the tokens of Hugging Face's KV-cached generate with the same vector added by a hook at
    the prefill."""
    model, tok = tiny_qwen2
    v = torch.randn(64) * 5
    got = steered_generate(backend, prompts, "blocks.0.hook_resid_post", v, max_new_tokens=6)
    enc = encode_batch(tok, prompts, padding_side="left")
    end = enc.input_ids.shape[1] - 1

    def fwd(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        if h.shape[1] > end:  # the prefill covers the prompt end; cached steps do not
            h = h.clone()
            h[:, end] += v
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
        return output

    handle = model.model.layers[0].register_forward_hook(fwd)
    try:
        with torch.no_grad():
            out = model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask, do_sample=False,
                                 max_new_tokens=6, pad_token_id=tok.pad_token_id,
                                 eos_token_id=stop_token_ids(tok))
    finally:
        handle.remove()
    want = [tok.decode(cut_at_stop(g, stop_token_ids(tok)), skip_special_tokens=True).strip()
            for g in out[:, enc.input_ids.shape[1]:].tolist()]
    assert got == want


def test_steering_along_the_unembedding_difference_flips_the_chosen_strategy(tiny_qwen2, backend, prompts):
    model, tok = tiny_qwen2
    emb = model.get_output_embeddings().weight.detach()
    f_id, b_id = tok.convert_tokens_to_ids("F"), tok.convert_tokens_to_ids("B")
    v = (emb[f_id] - emb[b_id]).numpy()  # at the last block, this direction raises logit(F) - logit(B)
    alphas = [-300.0, 0.0, 300.0]
    res = steering_dose_response(backend, prompts, "blocks.1.hook_resid_post", v, alphas, max_new_tokens=4,
                                 n_boot=100, progress=False)
    pf = [r["mean"] for r in res["p_forward"]]
    ld = [r["mean"] for r in res["logit_diff"]]
    assert ld[0] < ld[1] < ld[2] and pf[0] < pf[1] < pf[2]
    assert res["delta_p_forward"][1] == 0.0
    assert res["generated_first_word"][2]["forward"] == 1.0  # greedy generation with the hook held
    assert res["generated_first_word"][0]["backward"] == 1.0
    assert set(res["generated"][1]) == {"forward", "backward", "unparseable"}
    with pytest.raises(ValueError, match="d_model"):
        steering_dose_response(backend, prompts, "blocks.1.hook_resid_post", np.ones(3), [1.0], progress=False)
