"""Specification of the TransformerBridge backend beyond the shared one (test_backends.py)."""

import torch

from activations.backends import Patch
from activations.backends.bridge_backend import BridgeBackend
from activations.batch import encode_batch
from activations.load import load_checkpoint
from activations.positions import resolve_positions
import pytest

pytestmark = pytest.mark.integration


def test_the_bridge_wraps_a_copy_and_leaves_the_checkpoint_model_untouched(bridge_backend, ckpt):
    assert bridge_backend.bridge.original_model is not ckpt.model
    assert type(ckpt.model.model.layers[0]).__name__ == "Qwen2DecoderLayer"


def test_the_bridge_tokenizes_text_as_the_checkpoint_does(bridge_backend, ckpt, records):
    # transformer_lens would otherwise reload it with AutoTokenizer (Qwen2 BPE under transformers 5)
    for r in records[:3]:
        assert bridge_backend.bridge.tokenizer(r["prompt"])["input_ids"] == ckpt.tokenizer(r["prompt"])["input_ids"]


def test_a_bridge_can_wrap_a_model_built_in_memory(tiny_dir, records):
    from transformers import AutoModelForCausalLM

    from activations.load import Checkpoint, load_tokenizer

    ck = Checkpoint.from_model(AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager"),
                               load_tokenizer(str(tiny_dir)))
    batch = encode_batch(ck.tokenizer, [records[0]["prompt"]])
    got = BridgeBackend(ck).read(batch, ["blocks.0.hook_resid_post"])["blocks.0.hook_resid_post"]
    with torch.no_grad():
        want = ck.model(**batch.model_inputs(), output_hidden_states=True).hidden_states[1]
    assert torch.equal(got, want)


def test_the_bridge_boots_offline_from_a_local_directory_with_the_sdpa_model(tiny_dir, records):
    ck = load_checkpoint(tiny_dir)  # sdpa; the bridge switches its own copy to eager attention
    backend = BridgeBackend(ck)
    assert backend.bridge.original_model.config._attn_implementation == "eager"
    assert ck.model.config._attn_implementation == "sdpa"
    batch = encode_batch(ck.tokenizer, [r["prompt"] for r in records])
    acts = backend.read(batch, ["blocks.1.hook_resid_pre"])
    with torch.no_grad():
        hs = ck.model(**batch.model_inputs(), output_hidden_states=True).hidden_states
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(acts["blocks.1.hook_resid_pre"][mask], hs[1][mask], atol=1e-5, rtol=0)


def test_the_bridges_own_resid_mid_hook_would_only_patch_the_mlp_input(bridge_backend, ckpt, records):
    # Why resid_mid writes go through hook_attn_out: the bridge's hook_resid_mid is ln2.hook_in,
    # and editing it leaves the skip connection (HF's `residual`) unchanged.
    batch = encode_batch(ckpt.tokenizer, [records[0]["prompt"]])
    at = resolve_positions("prompt_end", batch)
    v = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))
    ours = bridge_backend.run(batch, read=["blocks.1.hook_resid_post"], at=at,
                              patches=[Patch("blocks.1.hook_resid_mid", v, at)])
    col = int(at.cols[0])

    def naive(act, hook):
        act = act.clone()
        act[0, col] = v[0]
        return act

    seen = {}

    def keep(name):
        def hook(act, hook):
            seen[name] = act[0, col].clone()  # returns None: observe only
        return hook

    with torch.no_grad(), bridge_backend.bridge.hooks(fwd_hooks=[
            ("blocks.1.hook_resid_mid", naive),
            ("blocks.1.hook_mlp_out", keep("mlp")),
            ("blocks.1.hook_resid_post", keep("post"))]):
        bridge_backend.bridge(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    # the MLP saw v either way, but only our write also puts v on the skip connection
    torch.testing.assert_close(ours.activations["blocks.1.hook_resid_post"][0], v[0] + seen["mlp"], atol=1e-5, rtol=0)
    assert not torch.allclose(seen["post"], v[0] + seen["mlp"], atol=1e-3)
