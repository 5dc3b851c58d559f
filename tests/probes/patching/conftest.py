"""Fixtures for the patching tests: tiny random Qwen2 models built here, nothing downloaded.

Models: 3 layers, d_model 64, 4 heads, 2 key/value heads, d_mlp 128, the task tokenizer's
vocabulary, tied embeddings, seeded; weights drawn with std 0.1 (not the default 0.02) so that
metric gaps between models are well above float noise.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from probes.task import sample_problems
from probes.task.tokenizer import build_tokenizer

N_LAYERS = 3


def tiny_qwen2(tok, seed: int = 0, n_layers: int = N_LAYERS, hidden_size: int = 64):
    """A seeded random ``Qwen2ForCausalLM`` for the task tokenizer, in eval mode."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=128, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256,
        initializer_range=0.1, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg).eval()


def with_new_mlp(model, layer: int, seed: int):
    """A copy of ``model`` whose layer ``layer`` MLP weights are re-randomised (nothing else differs)."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.model.layers[layer].mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return other


def with_new_blocks(model, seed: int):
    """A copy of ``model`` with every block re-randomised; embeddings, final norm (and so the
    unembedding, tied) unchanged."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in other.model.layers.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return other


def backend_of(model, tok):
    from activations.backends import make_backend
    from activations.load import Checkpoint

    return make_backend("nnsight", Checkpoint.from_model(model, tok))


def save(model, tok, path: Path) -> Path:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    # Tiny models gain nothing from intra-op threads; on shared cores OpenMP spin-waits can make
    # a two-thread forward far slower than a one-thread one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="package")
def base_model(tok):
    return tiny_qwen2(tok, seed=0)


@pytest.fixture(scope="package")
def base(base_model, tok):
    """The backend of the base model."""
    return backend_of(base_model, tok)


@pytest.fixture(scope="package")
def blocks_donor(base_model, tok):
    """The backend of a model with the base's embeddings and final norm and other blocks."""
    return backend_of(with_new_blocks(base_model, seed=7), tok)


@pytest.fixture(scope="package")
def mlp_variants(base_model, tok):
    """``{j: backend}`` of models that differ from the base only in layer j's MLP weights."""
    return {j: backend_of(with_new_mlp(base_model, j, seed=100 + j), tok) for j in range(N_LAYERS)}


@pytest.fixture(scope="package")
def problems():
    """Five problems of mixed chain lengths (so batches are padded) and both types."""
    return sample_problems(5, seed=3, steps=(2, 3))


@pytest.fixture(scope="package")
def pair_problems():
    """Four problems of one chain length (counterfactual pairs align position by position)."""
    return sample_problems(4, seed=5, steps=(3,))
