"""Specification shared by every backend: reads agree with Hugging Face, writes patch the forward.

Each test runs against both backends (the ``backend`` fixture: nnsight and the TransformerLens
TransformerBridge) on a tiny random Qwen2 model in fp32 with eager attention.
"""

import pytest
import torch

from activations.backends import Patch, PatchError
from activations.backends.base import normalize_rms
from activations.batch import encode_batch
from activations.positions import PositionIndex, resolve_positions
from activations.sites import known_site_names

pytestmark = pytest.mark.integration

L = 2
ALL_SITES = known_site_names(L)


@pytest.fixture(scope="module")
def batch(ckpt, records):
    return encode_batch(ckpt.tokenizer, [r["prompt"] for r in records], [r["response"] for r in records],
                        keys=[r["id"] for r in records], padding_side="left")


@pytest.fixture(scope="module")
def hf(ckpt, batch):
    with torch.inference_mode():
        return ckpt.model(**batch.model_inputs(), output_hidden_states=True)


@pytest.fixture(scope="module")
def at(batch):
    return resolve_positions(["prompt_end", "steps"], batch)


def _real(x, batch):
    return x[batch.attention_mask.bool()]


def test_residual_stream_matches_hugging_face_hidden_states(backend, batch, hf, ckpt):
    acts = backend.read(batch, ALL_SITES)
    hs = hf.hidden_states
    assert len(hs) == L + 1
    assert torch.equal(_real(acts["hook_embed"], batch), _real(hs[0], batch))
    for l in range(L):
        assert torch.equal(_real(acts[f"blocks.{l}.hook_resid_pre"], batch), _real(hs[l], batch))
    for l in range(L - 1):
        assert torch.equal(_real(acts[f"blocks.{l}.hook_resid_post"], batch), _real(hs[l + 1], batch))
    # HF's last hidden state is after the final norm: weight * hook_normalized(resid_post[L-1])
    last = acts[f"blocks.{L - 1}.hook_resid_post"]
    normed = acts["ln_final.hook_normalized"]
    assert torch.equal(normed, normalize_rms(last, ckpt.config.rms_norm_eps))
    assert torch.equal(_real(ckpt.model.model.norm.weight * normed, batch), _real(hs[L], batch))
    assert not torch.allclose(_real(last, batch), _real(hs[L], batch))


def test_block_decomposition_holds_exactly(backend, batch):
    acts = backend.read(batch, ALL_SITES)
    for l in range(L):
        pre, mid, post = (acts[f"blocks.{l}.hook_resid_{k}"] for k in ("pre", "mid", "post"))
        assert torch.equal(pre + acts[f"blocks.{l}.hook_attn_out"], mid)
        assert torch.equal(mid + acts[f"blocks.{l}.hook_mlp_out"], post)


def test_hook_z_is_per_head_and_o_proj_of_it_is_attn_out(backend, batch, ckpt):
    acts = backend.read(batch, ["blocks.1.attn.hook_z", "blocks.1.hook_attn_out"])
    z = acts["blocks.1.attn.hook_z"]
    assert z.shape == (len(batch), batch.seq_len, 4, 16)
    o_proj = ckpt.model.model.layers[1].self_attn.o_proj
    assert torch.allclose(o_proj(z.flatten(-2)), acts["blocks.1.hook_attn_out"], atol=1e-6, rtol=0)


def test_both_backends_read_identical_values(nnsight_backend, bridge_backend, batch, at):
    a = nnsight_backend.read(batch, ALL_SITES, at)
    b = bridge_backend.read(batch, ALL_SITES, at)
    for site in ALL_SITES:
        assert a[site].shape == (len(at), *((4, 16) if "hook_z" in site else (64,)))
        assert torch.equal(a[site], b[site]), site


@pytest.mark.parametrize("side", ["left", "right"])
def test_prompt_end_activations_do_not_depend_on_padding(backend, ckpt, records, side):
    prompts = [r["prompt"] for r in records]
    sites = ["blocks.*.hook_resid_post", "blocks.0.attn.hook_z", "ln_final.hook_normalized"]
    batch = encode_batch(ckpt.tokenizer, prompts, padding_side=side)
    assert len(set(batch.lengths.tolist())) > 1  # the batch really is padded
    padded = backend.read(batch, sites, resolve_positions("prompt_end", batch))
    for i, p in enumerate(prompts):
        alone = encode_batch(ckpt.tokenizer, [p])
        single = backend.read(alone, sites, resolve_positions("prompt_end", alone))
        for site, value in single.items():
            torch.testing.assert_close(padded[site][i], value[0], atol=1e-5, rtol=0)


def test_gathered_reads_and_logits_are_the_full_ones_indexed(backend, batch, at):
    full = backend.run(batch, read=["blocks.0.hook_mlp_out"], logits=True)
    part = backend.run(batch, read=["blocks.0.hook_mlp_out"], at=at, logits=at)
    assert torch.equal(part.activations["blocks.0.hook_mlp_out"], full.activations["blocks.0.hook_mlp_out"][at.rows, at.cols])
    assert torch.equal(part.logits, full.logits[at.rows, at.cols])


def test_reading_without_logits_stops_early_and_gives_the_same_values(backend, batch, at):
    stopped = backend.run(batch, read=["blocks.0.hook_resid_post"], at=at)
    assert stopped.logits is None
    full = backend.run(batch, read=["blocks.0.hook_resid_post"], at=at, logits=True)
    assert torch.equal(stopped.activations["blocks.0.hook_resid_post"], full.activations["blocks.0.hook_resid_post"])


def test_logits_match_hugging_face(backend, batch, hf):
    assert torch.equal(_real(backend.patch(batch, []), batch), _real(hf.logits, batch))


@pytest.mark.parametrize("site", ALL_SITES)
def test_patching_a_site_with_its_own_values_changes_nothing(backend, batch, at, hf, site):
    own = backend.read(batch, [site], at)[site]
    logits = backend.patch(batch, [Patch(site, own, at)])
    tol = 1e-5 if site.endswith("hook_resid_mid") else 0.0  # resid_mid writes round once
    torch.testing.assert_close(_real(logits, batch), _real(hf.logits, batch), atol=tol, rtol=0)


@pytest.mark.parametrize("site", ALL_SITES)
def test_both_backends_patch_to_the_same_logits(nnsight_backend, bridge_backend, batch, at, site):
    g = torch.Generator().manual_seed(0)
    shape = (len(at), 4, 16) if "hook_z" in site else (len(at), 64)
    values = torch.randn(shape, generator=g)
    a = nnsight_backend.patch(batch, [Patch(site, values, at)])
    b = bridge_backend.patch(batch, [Patch(site, values, at)])
    assert torch.equal(_real(a, batch), _real(b, batch))


@pytest.mark.parametrize("site", ["hook_embed", "blocks.1.hook_resid_pre", "blocks.0.hook_resid_mid",
                                  "blocks.1.attn.hook_z", "ln_final.hook_normalized"])
def test_a_read_of_a_patched_site_returns_the_patched_values(backend, batch, at, site):
    shape = (len(at), 4, 16) if "hook_z" in site else (len(at), 64)
    values = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out = backend.run(batch, read=[site], at=at, patches=[Patch(site, values, at)])
    tol = 1e-6 if site.endswith("hook_resid_mid") else 0.0
    torch.testing.assert_close(out.activations[site], values, atol=tol, rtol=0)


def test_a_patch_is_causal_it_changes_only_later_tokens_of_its_own_row(backend, batch, hf):
    row, pos = 2, 5
    at = PositionIndex.from_pairs(batch, [row], [pos])
    logits = backend.patch(batch, [Patch("blocks.0.hook_resid_post", torch.zeros(1, 64), at)])
    col = batch.column(row, pos)
    changed = ((logits - hf.logits).abs().amax(-1) > 0) & batch.attention_mask.bool()  # real tokens
    assert changed[row, col:].all()
    changed[row, col:] = False
    assert not changed.any()


def test_resid_mid_patch_replaces_the_residual_stream_not_only_the_mlp_input(backend, batch, ckpt):
    at = resolve_positions("prompt_end", batch)
    v = torch.randn(len(at), 64, generator=torch.Generator().manual_seed(2))
    out = backend.run(batch, read=["blocks.1.hook_resid_post"], at=at, logits=at,
                      patches=[Patch("blocks.1.hook_resid_mid", v, at)])
    layer, model = ckpt.model.model.layers[1], ckpt.model
    with torch.no_grad():
        post = v + layer.mlp(layer.post_attention_layernorm(v))
        logits = model.lm_head(model.model.norm(post))
    torch.testing.assert_close(out.activations["blocks.1.hook_resid_post"], post, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=0)


def test_one_head_of_hook_z_can_be_patched_alone(backend, batch, at):
    z = backend.read(batch, ["blocks.0.attn.hook_z"], at)["blocks.0.attn.hook_z"]
    values = torch.zeros(len(at), 16)
    out = backend.run(batch, read=["blocks.0.attn.hook_z"], at=at,
                      patches=[Patch("blocks.0.attn.hook_z", values, at, head=2)])
    got = out.activations["blocks.0.attn.hook_z"]
    assert torch.equal(got[:, 2], values)
    assert torch.equal(got[:, [0, 1, 3]], z[:, [0, 1, 3]])


def test_a_whole_activation_can_be_patched_without_coordinates(backend, batch, hf):
    full = backend.read(batch, ["blocks.1.hook_mlp_out"])["blocks.1.hook_mlp_out"]
    logits = backend.patch(batch, [Patch("blocks.1.hook_mlp_out", full)])
    assert torch.equal(_real(logits, batch), _real(hf.logits, batch))


def test_many_patches_in_one_forward_equal_the_same_patches_in_separate_rows(backend, ckpt, records):
    prompts = [r["prompt"] for r in records[:3]]
    batch = encode_batch(ckpt.tokenizer, prompts)
    at = resolve_positions("prompt_end", batch)
    values = torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
    together = backend.patch(batch, [Patch("blocks.0.hook_resid_post", values, at)], logits=at)
    for i, p in enumerate(prompts):
        single = encode_batch(ckpt.tokenizer, [p])
        at1 = resolve_positions("prompt_end", single)
        alone = backend.patch(single, [Patch("blocks.0.hook_resid_post", values[i:i + 1], at1)], logits=at1)
        torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=0)


def test_gradients_reach_patched_values_when_asked(backend, batch, at):
    values = torch.randn(len(at), 64, requires_grad=True)
    logits = backend.run(batch, patches=[Patch("blocks.0.hook_resid_post", values, at)], logits=at, grad=True).logits
    logits[:, 5].sum().backward()
    assert values.grad is not None and values.grad.abs().sum() > 0


def test_patch_values_of_the_wrong_shape_are_rejected_before_running(backend, batch, at):
    with pytest.raises(PatchError, match=r"blocks.0.attn.hook_z: patch values have shape \(3, 64\), expected \(\d+, 4, 16\)"):
        backend.patch(batch, [Patch("blocks.0.attn.hook_z", torch.zeros(3, 64), at)])
    with pytest.raises(PatchError, match="head 4 is out of range"):
        backend.patch(batch, [Patch("blocks.0.attn.hook_z", torch.zeros(len(at), 16), at, head=4)])
    with pytest.raises(PatchError, match="only meaningful for attn.hook_z"):
        backend.patch(batch, [Patch("hook_embed", torch.zeros(len(at), 64), at, head=0)])


def test_an_unknown_site_is_named(backend, batch):
    with pytest.raises(ValueError, match="unknown site 'blocks.0.hook_resid'"):
        backend.read(batch, ["blocks.0.hook_resid"])
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        backend.read(batch, ["blocks.2.hook_resid_post"])


def test_an_error_inside_the_forward_leaves_no_hook_behind(backend, batch, at, hf, monkeypatch):
    from activations.backends import base

    def boom(self, old):
        raise RuntimeError("boom inside the forward")

    with monkeypatch.context() as m:
        m.setattr(base._Write, "apply", boom)
        with pytest.raises(RuntimeError, match="boom inside the forward"):
            backend.patch(batch, [Patch("blocks.1.hook_resid_pre", torch.zeros(len(at), 64), at)])
    assert torch.equal(_real(backend.patch(batch, []), batch), _real(hf.logits, batch))
    if backend.name == "bridge":
        assert all(not hp._forward_hooks for hp in backend.bridge.hook_dict.values())
