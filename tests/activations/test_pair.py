"""Specification of the pair check: pre-RL and post-RL checkpoints must be patchable."""

import json

import pytest

from activations.load import load_checkpoint
from activations.pair import PairMismatchError, check_pair
from probes.task.tokenizer import build_tokenizer

pytestmark = pytest.mark.unit


def test_two_fine_tunes_of_one_architecture_pass(make_tiny_qwen2, tmp_path, ckpt):
    other = load_checkpoint(make_tiny_qwen2(tmp_path / "post", seed=7))
    check_pair(ckpt, other)  # no error: different weights, same architecture and tokenizer


@pytest.mark.parametrize("override, field", [
    (dict(hidden_size=96), "config.hidden_size"),
    (dict(num_hidden_layers=3), "config.num_hidden_layers"),
    (dict(num_key_value_heads=4), "config.num_key_value_heads"),
    (dict(intermediate_size=256), "config.intermediate_size"),
])
def test_a_different_architecture_fails_naming_the_field(make_tiny_qwen2, tmp_path, ckpt, override, field):
    other = load_checkpoint(make_tiny_qwen2(tmp_path / "post", **override))
    with pytest.raises(PairMismatchError, match=f"pre-RL and post-RL checkpoints differ in {field}") as e:
        check_pair(ckpt, other)
    assert e.value.what == field


def test_a_different_dtype_fails_naming_it(tiny_dir, ckpt):
    with pytest.raises(PairMismatchError, match="differ in dtype: float32 vs bfloat16"):
        check_pair(ckpt, load_checkpoint(tiny_dir, dtype="bfloat16"))


def _with_swapped_tokens(make_tiny_qwen2, tmp_path, a: str, b: str):
    tok = build_tokenizer()
    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    swapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                      pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>")
    return load_checkpoint(make_tiny_qwen2(tmp_path / "post", tokenizer=swapped))


def test_a_different_tokenizer_vocabulary_fails_naming_the_first_token(make_tiny_qwen2, tmp_path, ckpt):
    other = _with_swapped_tokens(make_tiny_qwen2, tmp_path, "ke", "ru")
    with pytest.raises(PairMismatchError, match="tokenizer vocabulary: token 'ke' has id") as e:
        check_pair(ckpt, other)
    assert e.value.what == "tokenizer vocabulary"


def test_a_tokenizer_that_splits_text_differently_fails_naming_the_key(make_tiny_qwen2, tmp_path, ckpt):
    tok = build_tokenizer()
    from tokenizers import pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    other = load_checkpoint(make_tiny_qwen2(tmp_path / "post", tokenizer=tok))
    with pytest.raises(PairMismatchError, match="tokenizer.json key 'pre_tokenizer"):
        check_pair(ckpt, other)


def test_the_error_names_the_models_as_asked(make_tiny_qwen2, tmp_path, ckpt):
    other = load_checkpoint(make_tiny_qwen2(tmp_path / "post", hidden_size=32))
    with pytest.raises(PairMismatchError, match="^donor and recipient checkpoints differ"):
        check_pair(ckpt, other, names=("donor", "recipient"))


def test_a_different_chat_template_fails_when_prompts_are_read_through_it():
    """Issue 19: the same vocabulary and tokenizer.json, but one extra empty system turn in the
    post-RL checkpoint's template: the models would read different inputs."""
    from activations.pair import check_tokenizers
    from probes.synth import CHAT_TEMPLATE, synth_tokenizer

    a, b = synth_tokenizer(64), synth_tokenizer(64)
    b.chat_template = "<|im_start|> system <|im_end|> " + CHAT_TEMPLATE
    check_tokenizers(a, b)  # plain prompts read the same ids: no error
    with pytest.raises(PairMismatchError, match=r"chat_template.*renders to \d+ vs \d+ tokens"):
        check_tokenizers(a, b, chat=True)
    b.chat_template = CHAT_TEMPLATE
    check_tokenizers(a, b, chat=True)
    b.chat_template = None
    with pytest.raises(PairMismatchError, match="present vs missing"):
        check_tokenizers(a, b, chat=True)
