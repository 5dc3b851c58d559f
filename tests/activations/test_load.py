"""Specification of checkpoint loading: local directories, dtype, hashes, and clear errors."""

import pytest
import torch

from activations.load import (
    CheckpointError,
    load_checkpoint,
    load_tokenizer,
    parse_dtype,
    tokenizer_hash,
)
from activations.hashing import state_dict_sha256 as weight_hash
from probes.task import sample_problems
from probes.task.tokenizer import build_tokenizer

pytestmark = pytest.mark.unit


def test_a_local_directory_loads_in_eval_mode_with_its_dims_and_dtype(tiny_dir):
    ck = load_checkpoint(tiny_dir, dtype="bf16")
    assert not ck.model.training
    assert ck.dtype == torch.bfloat16 and next(ck.model.parameters()).dtype == torch.bfloat16
    assert (ck.dims.n_layers, ck.dims.d_model, ck.dims.n_heads, ck.dims.d_head, ck.dims.n_kv_heads) == (2, 64, 4, 16, 2)
    assert ck.describe()["architecture"] == "Qwen2ForCausalLM"


def test_the_saved_word_level_tokenizer_is_loaded_exactly_not_rebuilt_as_qwen_bpe(tiny_dir):
    # transformers 5's AutoTokenizer rebuilds a Qwen2 BPE pipeline for model_type qwen2 and
    # mis-tokenizes the task's word-level tokenizer; load_tokenizer must not.
    tok = load_tokenizer(str(tiny_dir))
    reference = build_tokenizer()
    for p in sample_problems(5, seed=1):
        assert tok(p.prompt)["input_ids"] == reference(p.prompt)["input_ids"]
    assert tokenizer_hash(tok) == tokenizer_hash(reference)


def test_the_weight_hash_is_stable_across_loads_and_changes_with_one_weight(tiny_dir):
    a, b = load_checkpoint(tiny_dir), load_checkpoint(tiny_dir)
    assert a.weight_hash == b.weight_hash == weight_hash(a.model)
    with torch.no_grad():
        b.model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    assert weight_hash(b.model) != a.weight_hash


def test_a_different_seed_gives_a_different_weight_hash_and_the_same_tokenizer_hash(make_tiny_qwen2, tmp_path, ckpt):
    other = load_checkpoint(make_tiny_qwen2(tmp_path / "m", seed=1))
    assert other.weight_hash != ckpt.weight_hash
    assert other.tokenizer_hash == ckpt.tokenizer_hash


def test_fresh_model_is_an_independent_copy_with_the_same_weights(ckpt):
    copy = ckpt.fresh_model()
    assert copy is not ckpt.model and weight_hash(copy) == ckpt.weight_hash
    assert copy.config._attn_implementation == ckpt.model.config._attn_implementation


def test_a_missing_directory_is_named_in_the_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory at .*nope"):
        load_checkpoint(tmp_path / "nope")


def test_a_directory_without_config_json_says_what_is_missing(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_checkpoint(tmp_path)


def test_an_unreachable_hub_id_says_how_to_fix_it():
    # HF_HUB_OFFLINE=1 (tests/conftest.py): an uncached Hub id cannot be fetched
    with pytest.raises(CheckpointError, match="Hub"):
        load_checkpoint("nobody-here/no-such-model-xyz")


def test_a_tokenizer_larger_than_the_embedding_is_rejected(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    d = tmp_path / "small-vocab"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, intermediate_size=32)).save_pretrained(d)
    build_tokenizer().save_pretrained(d)
    with pytest.raises(CheckpointError, match="37 ids but the model's embedding has only 20 rows"):
        load_checkpoint(d)


def test_an_unknown_dtype_lists_the_accepted_names():
    assert parse_dtype("fp16") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'float8'.*bfloat16"):
        parse_dtype("float8")


def test_the_weights_hashes_on_disk_agree_with_sha256sum(tmp_path):
    """activations.hashing is the one home of content hashes: one file's weights hash is what
    sha256sum prints, and several files hash as their concatenation in name order."""
    import hashlib

    from activations.hashing import sha256_file, weights_sha256

    (tmp_path / "b.safetensors").write_bytes(b"second")
    (tmp_path / "a.safetensors").write_bytes(b"first")
    assert weights_sha256(tmp_path) == hashlib.sha256(b"firstsecond").hexdigest()
    assert sha256_file(tmp_path / "a.safetensors") == hashlib.sha256(b"first").hexdigest()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        weights_sha256(tmp_path / "a.safetensors")
