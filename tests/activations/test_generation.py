"""Greedy generation through a backend: a prompt-only patch decoded from a KV-cached prefill gives
the tokens of re-running the patched pass every step, and a patch that adds is a write of the sum."""

from contextlib import nullcontext

import pytest
import torch

from activations.backends import Patch
from activations.batch import encode_batch
from activations.generation import generate_greedy
from activations.positions import resolve_positions

pytestmark = pytest.mark.integration


def _steer(backend, v):
    def patches(batch, start):
        at = resolve_positions("prompt_end", batch)
        return [Patch("blocks.0.hook_resid_post", v.expand(len(batch), -1), at=at, add=True)]
    return patches


def test_a_cached_prefill_decodes_the_tokens_of_the_uncached_loop(nnsight_backend, records):
    prompts = [r["prompt"] for r in records[:5]]
    v = torch.randn(nnsight_backend.dims.d_model) * 3
    kw = dict(max_new_tokens=6, batch_size=3, return_ids=True)
    cached = generate_greedy(nnsight_backend, nnsight_backend.checkpoint.tokenizer, prompts, _steer(nnsight_backend, v),
                             prompt_only=True, **kw)
    rerun = generate_greedy(nnsight_backend, nnsight_backend.checkpoint.tokenizer, prompts, _steer(nnsight_backend, v),
                            **kw)
    plain = generate_greedy(nnsight_backend, nnsight_backend.checkpoint.tokenizer, prompts, **kw)
    assert cached == rerun and all(len(g) >= 1 for g in cached)
    assert cached != plain  # the vector changes what is generated (else the test shows nothing)


def test_an_added_patch_equals_writing_the_sum(backend, records):
    batch = encode_batch(backend.checkpoint.tokenizer, [r["prompt"] for r in records[:3]])
    at = resolve_positions("prompt_end", batch)
    site = "blocks.1.hook_resid_mid"
    clean = backend.read(batch, site, at)[site]
    v = torch.randn_like(clean)
    added = backend.patch(batch, [Patch(site, v, at=at, add=True)], logits=at)
    written = backend.patch(batch, [Patch(site, clean + v, at=at)], logits=at)
    torch.testing.assert_close(added, written, rtol=1e-4, atol=1e-4)
    with pytest.raises(NotImplementedError, match="key/value cache") if not backend.supports_kv_cache else nullcontext():
        backend.run(batch, logits=at, kv_cache=True)

