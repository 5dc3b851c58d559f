"""The pair check: can a pre-RL and a post-RL checkpoint be compared and patched?

Cross-model activation patching (CMAP, Prakash et al. 2024, arXiv 2402.14811) copies an
activation of one model into the same site and token of the other. That is meaningful only if
both models have the same architecture and shapes (so sites correspond one to one) and the same
tokenizer (so the same text gives the same tokens at the same positions). :func:`check_pair`
checks both and names the first difference.

Example::

    >>> check_pair(load_checkpoint(pre_dir), load_checkpoint(post_dir))   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from activations.load import Checkpoint, dtype_name, tokenizer_spec
from activations.manifest import first_difference

ARCHITECTURE_FIELDS: tuple[str, ...] = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "hidden_act",
    "rms_norm_eps",
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "tie_word_embeddings",
    "use_sliding_window",
    "sliding_window",
    "attention_bias",
)
"""Config fields that change what a site means; they must be equal in a pair (when present)."""


class PairMismatchError(ValueError):
    """The two checkpoints cannot be compared or patched; the message names the first mismatch.

    Attributes:
        what: the differing item, e.g. ``"config.hidden_size"`` or ``"tokenizer vocabulary"``.
    """

    def __init__(self, what: str, detail: str, names: tuple[str, str]):
        self.what = what
        super().__init__(
            f"{names[0]} and {names[1]} checkpoints differ in {what}: {detail}. Activations can "
            "only be compared and patched between checkpoints of the same architecture with the "
            "same tokenizer (fine-tunes of one base model)"
        )


def _config_value(config: Any, key: str) -> Any:
    config = getattr(config, "text_config", None) or config
    value = getattr(config, key, None)
    if key == "rope_theta" and value is None:
        params = getattr(config, "rope_parameters", None) or {}
        value = params.get("rope_theta") if isinstance(params, dict) else None
    return value


def check_architecture(a: Checkpoint, b: Checkpoint, names: tuple[str, str] = ("pre-RL", "post-RL")) -> None:
    """Check that two checkpoints have the same model class, architecture config, dtype and
    parameter shapes.

    Raises:
        PairMismatchError: naming the first difference (``model class``, ``config.<field>``,
            ``dtype``, ``parameter <name>``...).
    """
    if a.architecture != b.architecture:
        raise PairMismatchError("model class", f"{a.architecture} vs {b.architecture}", names)
    for key in ARCHITECTURE_FIELDS:
        va, vb = _config_value(a.config, key), _config_value(b.config, key)
        if va != vb:
            raise PairMismatchError(f"config.{key}", f"{va!r} vs {vb!r}", names)
    if a.dtype != b.dtype:
        raise PairMismatchError(
            "dtype", f"{dtype_name(a.dtype)} vs {dtype_name(b.dtype)} (load both with the same "
            "dtype=)", names)
    sa = {k: tuple(v.shape) for k, v in a.model.state_dict().items()}
    sb = {k: tuple(v.shape) for k, v in b.model.state_dict().items()}
    for key in sorted(set(sa) | set(sb)):
        if key not in sb:
            raise PairMismatchError(f"parameter {key}", f"present only in {names[0]}", names)
        if key not in sa:
            raise PairMismatchError(f"parameter {key}", f"present only in {names[1]}", names)
        if sa[key] != sb[key]:
            raise PairMismatchError(f"parameter {key}", f"shape {sa[key]} vs {sb[key]}", names)


PROBE_PROMPT = "p13 eval : add ke , mul ru ; x = pa ; y = ?"
"""A task prompt rendered through both chat templates to compare them (:func:`check_tokenizers`)."""


def check_tokenizers(a: Any, b: Any, names: tuple[str, str] = ("pre-RL", "post-RL"), chat: bool = False) -> None:
    """Check that two tokenizers turn every text into the same ids.

    Compares, in this order: the vocabulary size, each token's id (the first token that differs
    is named), the special tokens, then the rest of the tokenizer pipeline (normalizer,
    pre-tokenizer, merges, post-processor), naming the first differing key of ``tokenizer.json``;
    with ``chat``, the ids of :data:`PROBE_PROMPT` rendered as a user turn in each tokenizer's chat
    template (``tokenizer_config.json`` ``chat_template``, or ``chat_template.jinja``), since every
    stage reads the prompt that way.

    Raises:
        PairMismatchError: naming the first difference.
    """
    va, vb = a.get_vocab(), b.get_vocab()
    if len(va) != len(vb):
        raise PairMismatchError("tokenizer vocabulary size", f"{len(va)} vs {len(vb)} tokens", names)
    for token in sorted(set(va) | set(vb), key=lambda t: (va.get(t, vb.get(t, -1)), t)):
        if va.get(token) != vb.get(token):
            raise PairMismatchError(
                "tokenizer vocabulary",
                f"token {token!r} has id {va.get(token)} vs {vb.get(token)}", names)
    sa, sb = tokenizer_spec(a), tokenizer_spec(b)
    if sa["special_tokens"] != sb["special_tokens"]:
        raise PairMismatchError(
            "tokenizer special tokens", f"{sa['special_tokens']} vs {sb['special_tokens']}", names)
    diff = first_difference(sa, sb)
    if diff is not None:
        raise PairMismatchError(f"tokenizer.json key {diff!r}", "the tokenizers split text differently", names)
    if chat:
        check_chat_templates(a, b, names)


TEMPLATE_FIELD = "chat template (tokenizer_config.json chat_template, or chat_template.jinja)"
"""How the pair check names the chat template: transformers reads it from either file."""


def check_chat_templates(a: Any, b: Any, names: tuple[str, str] = ("pre-RL", "post-RL")) -> None:
    """Check that a task prompt renders to the same ids in both tokenizers' chat templates.

    Raises:
        PairMismatchError: the rendered ids differ (the message gives both lengths and the first
            differing token), or only one tokenizer has a chat template.
    """
    from activations.batch import render_prompt, tokenize

    has = [bool(getattr(t, "chat_template", None)) for t in (a, b)]
    if has[0] != has[1]:
        raise PairMismatchError(TEMPLATE_FIELD,
                                f"{'present' if has[0] else 'missing'} vs {'present' if has[1] else 'missing'}", names)
    if not has[0]:
        return
    ids = [tokenize(t, render_prompt(t, PROBE_PROMPT, True), True)["input_ids"] for t in (a, b)]
    if ids[0] != ids[1]:
        i = next((k for k, (x, y) in enumerate(zip(*ids)) if x != y), min(map(len, ids)))
        tok = [t.convert_ids_to_tokens(x[i]) if i < len(x) else "(end)" for t, x in zip((a, b), ids)]
        raise PairMismatchError(
            TEMPLATE_FIELD,
            f"a task prompt renders to {len(ids[0])} vs {len(ids[1])} tokens, first differing at token {i} "
            f"({tok[0]!r} vs {tok[1]!r}): the models would read different inputs", names)


def check_pair(pre: Checkpoint, post: Checkpoint, names: tuple[str, str] = ("pre-RL", "post-RL"),
               chat: bool = False) -> None:
    """Check that ``pre`` and ``post`` can be compared and patched (same architecture and shapes,
    same tokenizer). Returns None when they can.

    Args:
        pre, post: the two loaded checkpoints.
        names: how the error message calls them.
        chat: the prompts are read through the chat template (compared too).

    Raises:
        PairMismatchError: naming the first mismatch (architecture first, then tokenizer).
    """
    check_architecture(pre, post, names)
    check_tokenizers(pre.tokenizer, post.tokenizer, names, chat=chat)
