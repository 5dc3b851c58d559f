"""Exact forced-strategy accuracy: the correct response is unique, and a(s|x) is its probability."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probes.behaviour.exact import exact_forced_accuracy, forced_method
from probes.task.problems import random_problem
from probes.task.tokenizer import SPECIAL_TOKENS, build_tokenizer, vocabulary
from probes.task.traces import STRATEGIES, STRATEGY_TOKEN, make_trace
from probes.task.verify import verify

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
ORGANISM = REPO / "checkpoints" / "organism" / "sft-fb"
WORDS = [w for w in vocabulary() if w not in SPECIAL_TOKENS]


@st.composite
def problems(draw):
    import random

    rng = random.Random(draw(st.integers(0, 2**31)))
    return random_problem(rng, draw(st.sampled_from([11, 13])), draw(st.sampled_from(["evaluation", "inversion"])),
                          draw(st.integers(1, 6)))


@st.composite
def edits(draw, words):
    """Up to three word edits (substitute, insert, delete) of ``words``."""
    out = list(words)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["sub", "ins", "del"]))
        i = draw(st.integers(0, len(out)))
        if kind == "ins":
            out.insert(i, draw(st.sampled_from(WORDS)))
        elif out and i < len(out):
            if kind == "sub":
                out[i] = draw(st.sampled_from(WORDS))
            else:
                del out[i]
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems(), strategy=st.sampled_from(STRATEGIES), data=st.data())
def test_the_canonical_trace_is_the_only_correct_response(p, strategy, data):
    canonical = make_trace(p, strategy).split()
    assert verify(p, " ".join(canonical)).correct
    other = data.draw(edits(canonical))
    if other != canonical and other[:1] == [STRATEGY_TOKEN[strategy]]:
        assert not verify(p, " ".join(other)).correct, " ".join(other)


@settings(max_examples=200, deadline=None)
@given(p=problems(), strategy=st.sampled_from(STRATEGIES), i=st.integers(0, 200), w=st.sampled_from(WORDS))
def test_every_single_word_substitution_is_rejected(p, strategy, i, w):
    words = make_trace(p, strategy).split()
    i = 1 + i % (len(words) - 1)  # the strategy word is forced
    if words[i] != w:
        assert not verify(p, " ".join(words[:i] + [w] + words[i + 1:])).correct


def test_the_word_level_tokenizer_resolves_auto_to_exact():
    method, reason = forced_method("auto", build_tokenizer())
    assert method == "exact" and "one correct response" in reason
    with pytest.raises(ValueError, match="unknown forced-accuracy method"):
        forced_method("mc", build_tokenizer())


@pytest.fixture(scope="module")
def organism():
    from activations.load import load_checkpoint

    ck = load_checkpoint(str(ORGANISM))
    return ck.model, ck.tokenizer


@pytest.fixture(scope="module")
def few():
    from probes.behaviour.pipeline import held_out_problems

    return held_out_problems(8, 3, (1, 2, 3))


def _sequence_prob(model, tok, p, strategy) -> float:
    """P(canonical trace after the strategy word, then eos | prompt, strategy word), one problem,
    one unpadded forward pass, computed by hand."""
    prompt_ids = tok(p.prompt + " " + STRATEGY_TOKEN[strategy], add_special_tokens=False)["input_ids"]
    trace = make_trace(p, strategy).split()[1:]
    rest = tok(" ".join(trace), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids + rest])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0].double(), -1)
    n0 = len(prompt_ids)
    return math.exp(sum(float(lp[n0 - 1 + t, rest[t]]) for t in range(len(rest))))


def test_exact_a_is_the_probability_of_the_canonical_trace(organism, few):
    model, tok = organism
    a = exact_forced_accuracy(model, tok, few, batch_size=3)  # padded batches of mixed lengths
    want = np.array([[_sequence_prob(model, tok, p, s) for s in STRATEGIES] for p in few])
    assert a.shape == (len(few), 2)
    assert np.abs(a - want).max() < 1e-5
    assert 0.05 < a.mean() < 1.0  # a trained model: the canonical traces carry real probability


def test_exact_a_agrees_with_sampled_forced_accuracy(organism, few):
    """200 forced samples per (problem, strategy): the share that verifies correct is within
    sampling error (4 binomial standard errors) of the exact probability."""
    from probes.behaviour.generate import generate

    model, tok = organism
    ps = few[:3]
    a = exact_forced_accuracy(model, tok, ps)
    n = 200
    for j, s in enumerate(STRATEGIES):
        for i, p in enumerate(ps):
            texts = generate(model, tok, [p.prompt] * n, greedy=False, prefix=STRATEGY_TOKEN[s], max_new_tokens=60,
                             batch_size=n, seed=17 + i)
            share = np.mean([verify(p, t).correct for t in texts])
            se = math.sqrt(max(a[i, j] * (1 - a[i, j]), 0.01) / n)
            assert abs(share - a[i, j]) < 4 * se, (p.id, s, share, a[i, j])
