"""The dimensions of a decoder-only transformer, read from its Hugging Face config.

Every other module sizes tensors from a :class:`ModelDims` rather than from a config object,
so that the same code serves the model organism, Qwen2.5-1.5B and any Qwen2/Llama-style model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelDims:
    """Sizes that fix the shape of every activation site.

    Attributes:
        n_layers: number of transformer blocks (``num_hidden_layers``).
        d_model: width of the residual stream (``hidden_size``).
        n_heads: number of query heads (``num_attention_heads``).
        d_head: width of one head (``head_dim``, else ``d_model // n_heads``).
        n_kv_heads: number of key/value heads (GQA; ``num_key_value_heads``).
        d_mlp: width of the MLP (``intermediate_size``).
        d_vocab: rows of the embedding matrix (``vocab_size``).
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    n_kv_heads: int
    d_mlp: int
    d_vocab: int

    @classmethod
    def from_config(cls, config: Any) -> "ModelDims":
        """Read the dimensions of a Hugging Face ``PretrainedConfig`` (Qwen2, Llama, Mistral...).

        Raises:
            ValueError: the config lacks one of ``num_hidden_layers``, ``hidden_size``,
                ``num_attention_heads``, ``vocab_size`` (the message names it).
        """
        config = getattr(config, "text_config", None) or config
        missing = [
            k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")
            if getattr(config, k, None) is None
        ]
        if missing:
            raise ValueError(
                f"model config {type(config).__name__} has no {', '.join(missing)}: "
                "only decoder-only transformers with a Hugging Face config are supported"
            )
        n_heads = int(config.num_attention_heads)
        d_model = int(config.hidden_size)
        d_head = getattr(config, "head_dim", None) or d_model // n_heads
        return cls(
            n_layers=int(config.num_hidden_layers),
            d_model=d_model,
            n_heads=n_heads,
            d_head=int(d_head),
            n_kv_heads=int(getattr(config, "num_key_value_heads", None) or n_heads),
            d_mlp=int(getattr(config, "intermediate_size", 0) or 0),
            d_vocab=int(config.vocab_size),
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
