"""Specification of the random-init checkpoints of a real model's shape (``probes.synth``).

The Qwen2.5-1.5B shape is checked from its config and on the meta device (no 1.5B weights are
made); everything that writes weights uses the ``tiny`` shape.
"""

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from activations.load import load_checkpoint, tokenizer_hash
from probes.synth import (
    EXTRA_TOKEN,
    SHAPES,
    SynthError,
    make_synth,
    make_twin,
    qwen2_5_1_5b_config,
    read_state,
    rms,
    synth_tokenizer,
    weight_shapes,
)
from probes.task import NATURAL_STRATEGY, make_trace, sample_problems
from probes.task.tokenizer import build_tokenizer

pytestmark = pytest.mark.integration

QWEN_1_5B_PARAMS = 1_543_714_304  # Qwen2.5-1.5B-Instruct's parameter count (tied embeddings)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synth("tiny", 0, root / "pre")
    make_twin(root / "pre", 1, root / "post", scale=0.01)
    return root / "pre", root / "post"


def _tensors(path):
    return dict(read_state(path))


def test_the_qwen_shape_config_has_qwen2_5_1_5b_instructs_values(tmp_path):
    from transformers import AutoConfig

    qwen2_5_1_5b_config(0, 2, 3).save_pretrained(tmp_path)
    c = AutoConfig.from_pretrained(tmp_path)
    assert c.model_type == "qwen2" and c.architectures == ["Qwen2ForCausalLM"]
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (28, 1536, 12, 2)
    assert (c.intermediate_size, c.vocab_size, c.max_position_embeddings) == (8960, 151936, 32768)
    assert c.tie_word_embeddings is True and c.hidden_act == "silu"
    assert c.rope_parameters["rope_theta"] == 1_000_000.0 and c.rms_norm_eps == 1e-6
    assert c.use_sliding_window is False and c.attention_dropout == 0.0 and c.initializer_range == 0.02


def test_the_qwen_shape_has_its_parameter_count_and_no_stored_unembedding():
    shapes = weight_shapes(qwen2_5_1_5b_config(0, 2, 3))  # built on the meta device
    assert sum(torch.Size(s).numel() for s in shapes.values()) == QWEN_1_5B_PARAMS
    assert "lm_head.weight" not in shapes and shapes["model.embed_tokens.weight"] == (151936, 1536)
    assert shapes["model.layers.27.self_attn.k_proj.weight"] == (256, 1536)  # 2 kv heads x 128


def test_the_synth_tokenizer_fills_the_vocabulary_and_keeps_the_task_ids():
    tok, task = synth_tokenizer(151936), build_tokenizer()
    assert len(tok) == 151936
    assert all(tok.convert_tokens_to_ids(w) == i for w, i in task.get_vocab().items())
    assert tok.convert_ids_to_tokens(151935) == EXTRA_TOKEN.format(151935)
    n_task = len(task)
    assert tok.convert_ids_to_tokens(list(range(n_task, n_task + 5))) == ["<|im_start|>", "<|im_end|>", "system",
                                                                          "user", "assistant"]
    rendered = tok.apply_chat_template([{"role": "user", "content": "p11 eval : add da ; x = li ; y = ?"}],
                                       tokenize=False, add_generation_prompt=True)
    assert "<unk>" not in tok.convert_ids_to_tokens(tok(rendered)["input_ids"])
    assert rendered.endswith("<|im_start|> assistant ")
    with pytest.raises(SynthError, match="smaller than the task vocabulary"):
        synth_tokenizer(10)


def test_the_saved_tokenizer_round_trips_task_prompts_and_traces(tiny_pair):
    tok, task = load_checkpoint(tiny_pair[0]).tokenizer, build_tokenizer()
    for p in sample_problems(12, seed=3):
        for text in (p.prompt, make_trace(p, NATURAL_STRATEGY[p.type]), make_trace(p, "backward")):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert ids == task(text, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids) == text


def test_a_tiny_checkpoint_loads_with_its_shape_tied_and_runs(tiny_pair):
    ck = load_checkpoint(tiny_pair[0])
    d = ck.dims
    assert (d.n_layers, d.d_model, d.n_heads, d.n_kv_heads, d.d_mlp, d.d_vocab) == (2, 64, 4, 2, 128, 256)
    assert ck.model.lm_head.weight.data_ptr() == ck.model.model.embed_tokens.weight.data_ptr()
    stored = _tensors(tiny_pair[0])
    assert torch.equal(ck.model.model.layers[1].mlp.up_proj.weight, stored["model.layers.1.mlp.up_proj.weight"])
    enc = ck.tokenizer(sample_problems(1, seed=0)[0].prompt, return_tensors="pt")
    assert ck.model(**enc).logits.shape[-1] == 256
    card = json.loads((tiny_pair[0] / "synth.json").read_text())
    assert card["shape"] == "tiny" and card["n_params"] == sum(t.numel() for t in stored.values())


def test_the_same_seed_writes_identical_weights_and_another_seed_different_ones(tmp_path, tiny_pair):
    make_synth("tiny", 0, tmp_path / "again")
    make_synth("tiny", 5, tmp_path / "other")
    a, b, c = _tensors(tiny_pair[0]), _tensors(tmp_path / "again"), _tensors(tmp_path / "other")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_perturb_from_changes_every_tensor_by_the_seeded_relative_amount(tiny_pair):
    pre, post = _tensors(tiny_pair[0]), _tensors(tiny_pair[1])
    assert pre.keys() == post.keys()
    for name in pre:
        rel = rms(post[name] - pre[name]) / rms(pre[name])
        if pre[name].numel() >= 4096:  # sampling noise of the rms is ~1/sqrt(n)
            assert rel == pytest.approx(0.01, rel=0.05), name
        else:
            assert 0.003 < rel < 0.03, name
    card = json.loads((tiny_pair[1] / "synth.json").read_text())
    assert card["relative_change"] == pytest.approx(0.01, rel=0.02) and card["source_seed"] == 0


def test_perturb_from_is_reproducible_and_keeps_the_config_and_tokenizer(tmp_path, tiny_pair):
    make_twin(tiny_pair[0], 1, tmp_path / "again", scale=0.01, max_shard_gb=0.0001)  # several shards
    make_twin(tiny_pair[0], 2, tmp_path / "other", scale=0.01)
    assert len(list((tmp_path / "again").glob("model-*-of-*.safetensors"))) > 1
    a, b, c = _tensors(tiny_pair[1]), _tensors(tmp_path / "again"), _tensors(tmp_path / "other")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.norm.weight"], c["model.norm.weight"])
    assert (tiny_pair[0] / "config.json").read_text() == (tmp_path / "again" / "config.json").read_text()
    pre, again = load_checkpoint(tiny_pair[0]), load_checkpoint(tmp_path / "again")  # the sharded twin loads
    assert tokenizer_hash(pre.tokenizer) == tokenizer_hash(again.tokenizer)
    assert torch.equal(again.model.model.norm.weight, b["model.norm.weight"])


def test_bfloat16_weights_are_stored_in_bfloat16(tmp_path):
    make_synth("tiny", 0, tmp_path / "bf", dtype="bf16")
    with safe_open(str(tmp_path / "bf" / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    assert json.loads((tmp_path / "bf" / "config.json").read_text())["dtype"] == "bfloat16"


def test_bad_input_is_a_named_error(tmp_path):
    with pytest.raises(SynthError, match="unknown shape"):
        make_synth("qwen-9000", 0, tmp_path / "x")
    with pytest.raises(SynthError, match="unknown --dtype"):
        make_synth("tiny", 0, tmp_path / "x", dtype="int8")
    with pytest.raises(SynthError, match="not a checkpoint directory"):
        make_twin(tmp_path / "nope", 0, tmp_path / "y")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "config.json").write_text("{}")
    with pytest.raises(SynthError, match="did not write"):  # never overwrite someone's checkpoint
        make_synth("tiny", 0, tmp_path / "real")
    assert set(SHAPES) == {"qwen2.5-1.5b", "tiny"}


def test_the_cli_reports_a_bad_source_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "probes.synth", "--perturb-from", str(tmp_path / "nope"),
                        "--seed", "1", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: --perturb-from") and "Traceback" not in r.stderr
