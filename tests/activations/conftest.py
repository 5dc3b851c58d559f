"""Fixtures for the activations tests: tiny random Qwen2 models built here, nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from probes.task import NATURAL_STRATEGY, make_trace, sample_problems
from probes.task.tokenizer import build_tokenizer

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128)


def build_tiny_qwen2(path: Path, seed: int = 0, tokenizer=None, **overrides) -> Path:
    """Save a random Qwen2ForCausalLM (2 layers, d_model 64, 4 heads, 2 kv heads, d_mlp 128,
    the task tokenizer's vocabulary) and its tokenizer into ``path``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tokenizer if tokenizer is not None else build_tokenizer()
    cfg = Qwen2Config(
        vocab_size=len(tok), max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        **{**TINY, **overrides},
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # random RMSNorm weights, so hook_normalized != the norm's output
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


@pytest.fixture(scope="package")
def make_tiny_qwen2():
    """The factory :func:`build_tiny_qwen2` (test modules cannot import conftest)."""
    return build_tiny_qwen2


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    # Tiny models gain nothing from intra-op threads, and on shared CI cores OpenMP spin-waits
    # can make a two-thread forward ~100x slower than a one-thread one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="package")
def ckpt(tiny_dir):
    from activations.load import load_checkpoint

    return load_checkpoint(tiny_dir, dtype="float32", attn_implementation="eager")


@pytest.fixture(scope="package")
def nnsight_backend(ckpt):
    from activations.backends import make_backend

    return make_backend("nnsight", ckpt)


@pytest.fixture(scope="package")
def bridge_backend(ckpt):
    from activations.backends import make_backend

    return make_backend("bridge", ckpt)


@pytest.fixture(scope="package", params=["nnsight", "bridge"])
def backend(request):
    return request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture(scope="package")
def problems():
    """Eight problems of 1 to 4 steps: prompts of different lengths, so batches are padded."""
    return sample_problems(8, seed=3, steps=(1, 2, 3, 4))


@pytest.fixture(scope="package")
def records(problems):
    """Task records with the natural strategy's trace teacher-forced."""
    return [{"id": p.id, "prompt": p.prompt, "response": make_trace(p, NATURAL_STRATEGY[p.type])}
            for p in problems]
