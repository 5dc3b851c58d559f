"""The routing and execution metrics against plain Hugging Face forward passes."""

from __future__ import annotations

import pytest
import torch

from activations.batch import encode_batch
from probes.patching.metrics import MetricError, StepLogProb, StrategyLogitDiff, target_words
from probes.patching.sweep import baseline
from probes.task import Problem, make_trace

pytestmark = pytest.mark.unit


def _hf_logits(model, tok, texts):
    out = []
    with torch.no_grad():
        for t in texts:  # one at a time: no padding involved
            ids = tok(t, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out.append(model(input_ids=ids).logits[0])
    return out


def test_strategy_logit_diff_is_logit_F_minus_logit_B_at_the_last_prompt_token(base, base_model, tok, problems):
    metric = StrategyLogitDiff(tok)
    batch = encode_batch(tok, [p.prompt for p in problems])
    got = baseline(base, batch, metric)
    f, b = tok.convert_tokens_to_ids("F"), tok.convert_tokens_to_ids("B")
    want = torch.stack([lg[-1, f] - lg[-1, b] for lg in _hf_logits(base_model, tok, [p.prompt for p in problems])])
    assert (metric.forward_id, metric.backward_id) == (f, b)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_step_targets_are_value_results_map_results_solve_results_and_the_answer():
    # evaluation, forward: a value trace "F x = v ; op c = v ; op c = v ; ans v"
    p = Problem(11, "evaluation", (("add", 3), ("mul", 2)), 4)
    r = make_trace(p, "forward").split()
    assert target_words(" ".join(r)) == [8, 13, 16]
    assert [r[i - 1] for i in (8, 13)] == ["=", "="] and r[15] == "ans"
    # evaluation, backward: a map trace
    # B m = li b = ke ; div zo = m vo b ke ; sub da = m vo b ru ; x = pa ; sub ru = fe ; div vo = da ; ans da
    text = make_trace(p, "backward")
    words = text.split()
    assert words[11:15] == ["m", "vo", "b", "ke"] and words[38] == "ans"
    assert target_words(text) == [12, 14, 20, 22, 31, 36, 39]  # m, b of two map steps; two solves; answer
    assert target_words(text, ("answer",)) == [len(words) - 1]


def test_step_logprob_is_the_mean_log_probability_of_the_target_tokens(base, base_model, tok, problems):
    responses = [make_trace(p, s) for p, s in zip(problems, ["forward", "backward"] * 3)]
    prompts = [p.prompt for p in problems]
    metric = StepLogProb(tok, prompts, responses)
    batch = encode_batch(tok, prompts, responses)
    got = baseline(base, batch, metric)
    want = []
    for pr, resp, lg in zip(prompts, responses, _hf_logits(base_model, tok, [f"{a} {b}" for a, b in zip(prompts, responses)])):
        n_prompt = len(pr.split())
        lp = torch.log_softmax(lg, -1)
        ids = tok(f"{pr} {resp}", add_special_tokens=False)["input_ids"]
        tg = [n_prompt + w for w in target_words(resp)]
        want.append(torch.stack([lp[t - 1, ids[t]] for t in tg]).mean())
    torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=0)
    assert bool((got < 0).all())


def test_metric_plan_tiled_over_copies_reduces_each_copy_alike(base, tok, problems):
    metric = StrategyLogitDiff(tok)
    batch = encode_batch(tok, [p.prompt for p in problems])
    plan = metric.plan(batch)
    logits = base.run(batch, logits=plan.index).logits
    tiled = plan.reduce(torch.cat([logits, logits + 1.0, logits * 2]), 3)
    assert tiled.shape == (3, len(problems))
    torch.testing.assert_close(tiled[1], tiled[0])  # a constant shift cancels in a difference
    torch.testing.assert_close(tiled[2], 2 * tiled[0])


def test_execution_metric_rejects_a_row_without_a_response(tok, problems):
    with pytest.raises(MetricError, match="teacher-forced response"):
        StepLogProb(tok, [problems[0].prompt], [None])


def test_target_words_reject_a_response_without_an_answer():
    with pytest.raises(MetricError, match="ans VALUE"):
        target_words("F x = zo ; add ke = ke", ("answer",))
