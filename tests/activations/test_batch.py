"""Specification of token batches: padding, attention masks, position ids, located positions."""

import pytest
import torch

from activations.batch import PositionError, encode_batch, model_text
from probes.task import make_trace
from probes.task.tokenizer import build_tokenizer
from probes.task.traces import step_positions

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_puts_each_input_where_the_mask_and_position_ids_say(tok, problems, side):
    prompts = [p.prompt for p in problems]
    b = encode_batch(tok, prompts, padding_side=side)
    for i, p in enumerate(prompts):
        ids = tok(p)["input_ids"]
        n, off = len(ids), int(b.pad_offset[i])
        assert off == (b.seq_len - n if side == "left" else 0)
        assert b.input_ids[i, off:off + n].tolist() == ids
        assert b.attention_mask[i].sum() == n and b.attention_mask[i, off:off + n].all()
        assert b.position_ids[i, off:off + n].tolist() == list(range(n))


def test_prompt_end_is_the_last_prompt_token_with_and_without_a_response(tok, problems):
    p = problems[0]
    resp = make_trace(p, "forward")
    b = encode_batch(tok, [p.prompt, p.prompt], [resp, None])
    n_prompt = len(p.prompt.split())
    assert b.prompt_end.tolist() == [n_prompt - 1, n_prompt - 1]
    assert tok.convert_ids_to_tokens(int(b.input_ids[1, b.column(1, n_prompt - 1)])) == "?"


def test_steps_are_the_tokens_of_each_step_equals_sign(tok, problems):
    p = problems[-1]
    resp = make_trace(p, "backward")
    b = encode_batch(tok, [p.prompt], [resp])
    n_prompt = len(p.prompt.split())
    assert b.steps[0] == [n_prompt + w for w in step_positions(resp)]
    assert all(tok.convert_ids_to_tokens(int(b.input_ids[0, b.column(0, i)])) == "=" for i in b.steps[0])


def test_model_text_joins_prompt_and_response_with_one_space():
    assert model_text("a b", "c") == "a b c" and model_text("a b", None) == "a b"


def _byte_level_bpe(texts, vocab_size=300):
    """A Qwen-style byte-level BPE tokenizer trained here on task text (nothing downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>"],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>")


def test_positions_are_found_from_offsets_under_a_byte_level_bpe_tokenizer(problems):
    texts = [model_text(p.prompt, make_trace(p, s)) for p in problems for s in ("forward", "backward")]
    bpe = _byte_level_bpe(texts)
    p = problems[2]
    resp = make_trace(p, "forward")
    b = encode_batch(bpe, [p.prompt], [resp])
    text = model_text(p.prompt, resp)
    offsets = bpe(text, return_offsets_mapping=True)["offset_mapping"]
    end = int(b.prompt_end[0])
    assert text[offsets[end][0]:offsets[end][1]].strip() == "?"
    assert offsets[end + 1][0] >= len(p.prompt)  # the next token is the response's
    assert len(b.steps[0]) == len(step_positions(resp))
    for i in b.steps[0]:
        assert "=" in text[offsets[i][0]:offsets[i][1]]


def test_a_batch_without_prompts_is_rejected(tok):
    with pytest.raises(ValueError, match="empty batch"):
        encode_batch(tok, [])


def test_an_unknown_padding_side_is_named(tok):
    with pytest.raises(ValueError, match="unknown padding side 'middle'"):
        encode_batch(tok, ["p11 eval : add ke ; x = ru ; y = ?"], padding_side="middle")


def test_an_empty_prompt_has_no_prompt_end(tok):
    with pytest.raises(PositionError, match="rec-1: the prompt tokenizes to no tokens"):
        encode_batch(tok, [""], keys=["rec-1"])


def test_input_tensors_are_long_and_share_one_shape(tok, problems):
    b = encode_batch(tok, [p.prompt for p in problems])
    for t in (b.input_ids, b.attention_mask, b.position_ids):
        assert t.dtype == torch.long and t.shape == b.input_ids.shape


QWEN_CHATML = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are a "
               "helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""Qwen2.5-Instruct's ChatML layout (default system turn, then the user turn, then the generation
prompt), written here: the real template cannot be downloaded."""


def _chat_bpe(problems, vocab_size=300):
    texts = [model_text(p.prompt, make_trace(p, s)) for p in problems for s in ("forward", "backward")]
    bpe = _byte_level_bpe(texts + ["You are a helpful assistant. system user assistant"], vocab_size)
    bpe.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    bpe.chat_template = QWEN_CHATML
    return bpe


def test_chat_prompts_end_at_the_templates_last_token_and_the_response_follows_without_a_space(problems):
    from activations.batch import render_prompt

    bpe = _chat_bpe(problems)
    p = problems[2]
    resp = make_trace(p, "forward")
    rendered = render_prompt(bpe, p.prompt, chat=True)
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith(f"{p.prompt}<|im_end|>\n<|im_start|>assistant\n")
    assert model_text(rendered, resp, chat=True) == rendered + resp
    b = encode_batch(bpe, [p.prompt, p.prompt], [resp, None], chat=True)
    text = rendered + resp
    offsets = bpe(text, return_offsets_mapping=True)["offset_mapping"]
    end = int(b.prompt_end[0])
    assert int(b.prompt_end[1]) == end  # with and without the response
    assert text[offsets[end][0]:offsets[end][1]] == "\n" and offsets[end][1] == len(rendered)
    assert offsets[end + 1][0] == len(rendered) and text[offsets[end + 1][0]] == "F"
    assert len(b.steps[0]) == len(step_positions(resp))
    assert all("=" in text[offsets[i][0]:offsets[i][1]] for i in b.steps[0])
    plain = encode_batch(bpe, [p.prompt], [resp])
    assert int(b.lengths[0]) > int(plain.lengths[0])  # the template's tokens are really there


def test_chat_with_a_tokenizer_without_a_template_names_the_fix(tok, problems):
    from activations.batch import ChatTemplateError

    with pytest.raises(ChatTemplateError, match="no chat template.*set chat: false"):
        encode_batch(tok, [problems[0].prompt], chat=True)


def test_the_first_response_token_is_the_one_after_the_generation_prompt_in_chat_and_after_a_space_otherwise(problems):
    from activations.batch import response_token_id

    bpe = _chat_bpe(problems, vocab_size=400)  # large enough to merge " F" into one token, as Qwen's does
    chat_f, plain_f = response_token_id(bpe, "F", chat=True), response_token_id(bpe, "F")
    assert bpe.convert_ids_to_tokens(chat_f) == "F" and bpe.convert_ids_to_tokens(plain_f) == "ĠF"
    p = problems[0]
    b = encode_batch(bpe, [p.prompt, p.prompt], [make_trace(p, "forward"), make_trace(p, "forward")], chat=True)
    assert int(b.input_ids[0, b.column(0, int(b.prompt_end[0]) + 1)]) == chat_f  # what the model reads there
    plain = encode_batch(bpe, [p.prompt], [make_trace(p, "forward")])
    assert int(plain.input_ids[0, plain.column(0, int(plain.prompt_end[0]) + 1)]) == plain_f
    assert response_token_id(build_tokenizer(), "F") == build_tokenizer().convert_tokens_to_ids("F")
