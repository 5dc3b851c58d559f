"""The model organism: a small ``Qwen2ForCausalLM`` with the task's word-level tokenizer."""

from __future__ import annotations

from probes.train.config import ModelConfig


def qwen2_config(cfg: ModelConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
    """A ``transformers.Qwen2Config`` written out in full for the organism's shape."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        hidden_act="silu",
        max_position_embeddings=cfg.max_positions,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        tie_word_embeddings=True,
        rope_theta=cfg.rope_theta,
        use_sliding_window=False,
        attention_dropout=0.0,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )


def build_model(cfg: ModelConfig, tokenizer, seed: int = 0):
    """A randomly initialised organism (seeded) for ``tokenizer``'s vocabulary."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    conf = qwen2_config(cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    model = Qwen2ForCausalLM(conf)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
