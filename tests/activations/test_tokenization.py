"""Every path reads the same tokens (issue 19): the same text gives the same ids on the paths of
behaviour (first-token probabilities, generation), the cache and patching (``encode_batch``), the
metrics, steering, and the training data as TRL tokenizes it, for three tokenizer styles built here."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activations.batch import encode_batch, render_prompt, response_separator, tokenize

pytestmark = pytest.mark.unit

STYLES = ("word-level", "bpe-chatml", "bos")


def _bos_tokenizer():
    """The task's word-level tokenizer with a post-processor that prepends ``<bos>`` (Llama-style)
    and a chat template that writes the BOS itself."""
    from tokenizers import processors

    from probes.synth import CHAT_TEMPLATE, synth_tokenizer

    tok = synth_tokenizer(64)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", tok.bos_token_id)])
    tok.chat_template = "<bos> " + CHAT_TEMPLATE
    return tok


def _tokenizer(style):
    from probes.task.tokenizer import build_tokenizer
    from tests.conftest import qwen_like_tokenizer

    return {"word-level": build_tokenizer, "bpe-chatml": lambda: qwen_like_tokenizer(vocab_size=310),
            "bos": _bos_tokenizer}[style]()


@pytest.fixture(scope="module")
def worlds():
    from probes.train.config import ModelConfig
    from probes.train.model import build_model

    out = {}
    for style in STYLES:
        tok = _tokenizer(style)
        model = build_model(ModelConfig(layers=1, d_model=16, heads=2, kv_heads=1, d_mlp=32), tok, seed=0).eval()
        out[style] = (tok, model)
    return out


def test_the_bos_style_really_prepends_a_bos():
    tok = _bos_tokenizer()
    assert tokenize(tok, "x = y")["input_ids"][0] == tok.bos_token_id
    assert tokenize(tok, render_prompt(tok, "x", True), True)["input_ids"].count(tok.bos_token_id) == 1


def _first_forward_ids(model, call):
    """The input ids of the first forward pass ``call()`` makes through ``model`` (unpadded row 0)."""
    seen: list[list[int]] = []

    def grab(module, args):
        if not seen:
            seen.append(args[0][0].tolist())

    h = model.model.embed_tokens.register_forward_pre_hook(grab)
    try:
        call()
    finally:
        h.remove()
    return seen[0]


def _problem(seed):
    from probes.task.problems import random_problem

    rng = random.Random(seed)
    return random_problem(rng, rng.choice([11, 13]), rng.choice(["evaluation", "inversion"]), rng.randint(1, 4))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), style=st.sampled_from(STYLES), chat=st.booleans())
def test_every_path_reads_the_same_ids(worlds, seed, style, chat):
    from trl.data_utils import _tokenize

    from probes.behaviour.generate import first_token_probs, generate
    from probes.patching.metrics import TraceLogProb
    from activations.backends import make_backend
    from activations.load import Checkpoint
    from probes.probing.steering import steered_first_token
    from probes.task.traces import make_trace

    tok, model = worlds[style]
    if chat and not tok.chat_template:
        chat = False
    p = _problem(seed)
    want = encode_batch(tok, [p.prompt], chat=chat).input_ids[0].tolist()  # the cache's and patching's ids
    assert _first_forward_ids(model, lambda: first_token_probs(model, tok, [p.prompt], chat=chat)) == want
    assert _first_forward_ids(model, lambda: generate(model, tok, [p.prompt], greedy=True, max_new_tokens=2,
                                                      chat=chat)) == want
    site = "blocks.0.hook_resid_post"
    backend = make_backend("nnsight", Checkpoint.from_model(model, tok))
    assert _first_forward_ids(model, lambda: steered_first_token(backend, [p.prompt], site, torch.zeros(16),
                                                                 chat=chat)) == want
    # the training data as TRL tokenizes it: the prompt alone (SFT's prompt, GRPO's prompt) and with its completion
    trace = make_trace(p, "forward")
    metric = TraceLogProb(tok, [p.prompt], [trace], chat=chat)
    if chat:
        msgs = [{"role": "user", "content": p.prompt}]
        trl_prompt = _tokenize(tok, msgs, add_generation_prompt=True)["input_ids"]
        trl_full = _tokenize(tok, msgs + [{"role": "assistant", "content": trace}])["input_ids"]
    else:
        trl_prompt = _tokenize(tok, p.prompt)["input_ids"]
        trl_full = _tokenize(tok, p.prompt + response_separator(False) + trace + tok.eos_token)["input_ids"]
    assert trl_prompt == want
    full = encode_batch(tok, metric.prompts, metric.response_texts(), chat=chat).input_ids[0].tolist()
    assert trl_full[:len(full)] == full  # a chat template may write more after the turn's end (a newline)
    targets = metric._targets[0]  # the exact metric scores the training sequence's tokens
    assert [t for _, t in targets] == full[targets[0][0] + 1:]
