"""Specification of the nnsight backend beyond the shared one (tests/activations/backends/test_backends.py)."""

import pytest
import torch

from activations.backends.nnsight_backend import NNsightBackend, UnsupportedModelError
from activations.batch import encode_batch
from activations.load import Checkpoint, load_checkpoint
from activations.sites import known_site_names

pytestmark = pytest.mark.integration


def test_with_the_default_sdpa_kernel_reads_match_hugging_face_exactly(tiny_dir, records):
    ck = load_checkpoint(tiny_dir)  # transformers' default attention (sdpa)
    backend = NNsightBackend(ck)
    batch = encode_batch(ck.tokenizer, [r["prompt"] for r in records])
    acts = backend.read(batch, known_site_names(2))
    with torch.no_grad():
        hs = ck.model(**batch.model_inputs(), output_hidden_states=True).hidden_states
    mask = batch.attention_mask.bool()
    assert torch.equal(acts["blocks.0.hook_resid_post"][mask], hs[1][mask])


def test_the_wrapped_model_still_runs_as_plain_hugging_face_outside_a_trace(tiny_dir, records):
    wrapped, fresh = load_checkpoint(tiny_dir), load_checkpoint(tiny_dir)
    NNsightBackend(wrapped).read(encode_batch(wrapped.tokenizer, [records[0]["prompt"]]), ["hook_embed"])
    batch = encode_batch(fresh.tokenizer, [r["prompt"] for r in records])
    with torch.no_grad():
        assert torch.equal(wrapped.model(**batch.model_inputs()).logits, fresh.model(**batch.model_inputs()).logits)


def test_a_model_without_the_qwen2_llama_layout_is_rejected_by_module_name():
    from transformers import GPT2Config, GPT2LMHeadModel

    from probes.task.tokenizer import build_tokenizer

    model = GPT2LMHeadModel(GPT2Config(vocab_size=37, n_embd=16, n_layer=1, n_head=2, n_positions=64))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel has no module 'model.embed_tokens'"):
        NNsightBackend(Checkpoint.from_model(model, build_tokenizer()))
