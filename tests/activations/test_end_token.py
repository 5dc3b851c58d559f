"""The end token SFT teaches is one that generation and GRPO stop at (issue 19)."""

from __future__ import annotations

import pytest

from activations.batch import (EndTokenError, check_end_token, cut_at_stop, response_end, stop_token_ids)
from tests.conftest import qwen_like_tokenizer

pytestmark = pytest.mark.unit


def test_plain_prompts_end_at_the_eos_token():
    from probes.task.tokenizer import build_tokenizer

    tok = build_tokenizer()
    end = response_end(tok)
    assert (end.token_id, end.text) == (tok.eos_token_id, "<eos>")
    assert stop_token_ids(tok) == [tok.eos_token_id]


def test_a_chat_turn_ends_at_the_template_end_of_turn_token():
    from probes.synth import synth_tokenizer

    synth = synth_tokenizer(64)
    end = response_end(synth, chat=True)
    assert synth.convert_ids_to_tokens(end.token_id) == "<|im_end|>" and end.text == " <|im_end|>"
    base = qwen_like_tokenizer(eos="<|endoftext|>")  # a base model's tokenizer with a ChatML template
    end = response_end(base, chat=True)
    assert base.convert_ids_to_tokens(end.token_id) == "<|im_end|>" and end.text == "<|im_end|>"
    assert base.convert_ids_to_tokens(stop_token_ids(base, chat=True)) == ["<|im_end|>", "<|endoftext|>"]
    instruct = qwen_like_tokenizer(eos="<|im_end|>")
    assert instruct.convert_ids_to_tokens(stop_token_ids(instruct, chat=True)) == ["<|im_end|>"]


def test_stopping_at_eos_alone_is_refused_when_sft_taught_another_end():
    tok = qwen_like_tokenizer(eos="<|endoftext|>")
    with pytest.raises(EndTokenError, match=r"stops generating at \['<\|endoftext\|>'\].*teaches '<\|im_end\|>'"):
        check_end_token(tok, True, [tok.eos_token_id], "GRPO")
    check_end_token(tok, True, stop_token_ids(tok, True), "GRPO")


def test_no_end_token_is_a_clear_error():
    tok = qwen_like_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(EndTokenError, match="writes nothing after an assistant turn"):
        response_end(tok, chat=True)


def test_cut_at_stop():
    assert cut_at_stop([5, 6, 2, 7, 2], [2, 9]) == [5, 6]
    assert cut_at_stop([5, 6], [2]) == [5, 6]


def test_chat_generation_stops_at_the_turn_end_and_the_response_verifies():
    """A model forced (by a hook on its logits) to write a correct trace, the turn end, then more
    turns: the generated response is the trace. Stopping at the tokenizer's eos alone ran on into
    the next turn and the verifier marked the response wrong."""
    from probes.synth import synth_tokenizer
    from probes.behaviour.generate import generate
    from probes.task import sample_problems
    from probes.task.traces import make_trace
    from probes.task.verify import verify
    from probes.train.config import ModelConfig
    from probes.train.model import build_model

    tok = synth_tokenizer(64)
    model = build_model(ModelConfig(layers=1, d_model=16, heads=2, kv_heads=1, d_mlp=32), tok, seed=0).eval()
    p = sample_problems(1, seed=4, steps=(2,))[0]
    trace = make_trace(p, "forward")
    then = tok(" <|im_start|> user x = y", add_special_tokens=False)["input_ids"]
    seq = tok(trace, add_special_tokens=False)["input_ids"] + [response_end(tok, True).token_id] + then * 4
    state = {"t": 0}

    def force(module, inputs, out):
        out = out.clone()
        out[:, -1, seq[min(state["t"], len(seq) - 1)]] += 1e4
        state["t"] += 1
        return out

    handle = model.lm_head.register_forward_hook(force)
    try:
        text = generate(model, tok, [p.prompt], greedy=True, max_new_tokens=len(seq), chat=True)[0]
    finally:
        handle.remove()
    assert text == trace and verify(p, text).correct
