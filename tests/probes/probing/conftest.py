"""Fixtures for the probe tests: planted-signal problem sets and a tiny random Qwen2, built here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.task import sample_problems


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    # tiny problems gain nothing from intra-op threads, and on shared cores OpenMP / OpenBLAS
    # spin-waits make two-thread solvers many times slower: one thread for torch, BLAS, OpenMP
    import sklearn.linear_model  # noqa: F401  (load scipy's and sklearn's pools before limiting them)
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="package")
def cli_env():
    """The environment for CLI subprocesses: this one, single-threaded."""
    import os

    return {**os.environ, **ONE_THREAD_ENV}


def twin_problems(n_chains: int, seed: int = 0, steps=(1, 2, 3)):
    """``2 * n_chains`` problems: each sampled problem followed by its twin (same chain)."""
    out = []
    for p in sample_problems(n_chains, seed=seed, steps=steps):
        out += [p, p.twin()]
    return out


@pytest.fixture(scope="package")
def tiny_qwen2():
    """A random ``Qwen2ForCausalLM`` (2 layers, d_model 64, 4 heads, 2 kv heads, d_mlp 128, the task
    vocabulary of 37 words, tied embeddings) and the task tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from probes.task.tokenizer import build_tokenizer

    tok = build_tokenizer()
    cfg = Qwen2Config(vocab_size=37, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    assert len(tok) == 37
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).eval()
    return model, tok


def behaviour_rows(problems, strategies, seed=0):
    """Behaviour-like label rows (``probes.behaviour`` JSONL fields) for ``problems``."""
    rng = np.random.default_rng(seed)
    rows = []
    for p, s in zip(problems, strategies):
        ld = float(rng.normal(1.0 if s == "forward" else -1.0, 1.0))
        pf = 1 / (1 + np.exp(-ld))
        rows.append({"id": p.id, "prompt": p.prompt, "type": p.type, "greedy_strategy": s,
                     "greedy_correct": bool(rng.random() < 0.6), "pi": [pf, 1 - pf], "logit_diff": ld})
    return rows


@pytest.fixture(scope="package")
def make_twins():
    """The factory :func:`twin_problems` (test modules cannot import conftest)."""
    return twin_problems


@pytest.fixture(scope="package")
def make_behaviour_rows():
    """The factory :func:`behaviour_rows`."""
    return behaviour_rows
