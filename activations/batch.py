"""Token batches: prompts (with optional teacher-forced responses) tokenized and padded.

The model input of a problem is its prompt, or ``prompt + " " + response`` when a response is
teacher-forced. With ``chat=True`` (instruct checkpoints trained on chat messages, ``data.chat:
true``) the prompt is first rendered as a user turn inside the tokenizer's chat template with the
assistant's generation prompt (:func:`render_prompt`), and the response follows it directly, as
TRL renders chat prompt-completion data; ``prompt_end`` is then the template's last token. Padding is explicit and on either side; the attention mask and the position ids
(``cumsum(mask) - 1``, as ``generate`` computes them) make every real token see exactly what it
would see unpadded, so activations at a token do not depend on the batch it was run in.

Token positions are located from character offsets (``return_offsets_mapping``), never by
counting words, so they are right for the task's word-level tokenizer and for byte-level BPE
tokenizers like Qwen's alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from typing import Callable

PADDING_SIDES = ("left", "right")


class PositionError(ValueError):
    """A position that cannot be located in a tokenized input; the message names the input."""


@dataclass
class TokenBatch:
    """A padded batch of model inputs.

    Attributes:
        input_ids: ``Int[Tensor, "batch pos"]`` token ids, pad id at pad tokens.
        attention_mask: ``Int[Tensor, "batch pos"]`` 1 at real tokens, 0 at pads.
        position_ids: ``Int[Tensor, "batch pos"]`` position of each real token in its own
            sequence (0 at its first token); 1 at pads.
        lengths: ``Int[Tensor, "batch"]`` number of real tokens of each input.
        pad_offset: ``Int[Tensor, "batch"]`` column of each input's first real token (its
            number of left pads; 0 under right padding).
        prompt_end: ``Int[Tensor, "batch"]`` index (within the unpadded input) of the last
            prompt token: the token whose logits predict the first response token.
        steps: per input, the indices (within the unpadded input) of the token of each step's
            ``=`` in the teacher-forced response (:func:`probes.task.traces.step_positions`);
            empty for inputs without a response.
        has_response: per input, whether a response was teacher-forced.
        prompt_words: per input, the index (within the unpadded input) of the last token of each
            whitespace-separated word of the task prompt, in word order (inside the chat template
            with ``chat``), for ``words:i`` positions; empty where it was not computed.
        keys: per input, its row key (a problem id) for error messages and stores.
        padding_side: ``"left"`` or ``"right"``.
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    position_ids: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]
    pad_offset: Int[Tensor, " batch"]
    prompt_end: Int[Tensor, " batch"]
    steps: list[list[int]]
    has_response: list[bool]
    keys: list[str]
    padding_side: str
    prompt_words: list[list[int]] | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def column(self, row: int, index: int) -> int:
        """The padded column of token ``index`` (within the unpadded input ``row``)."""
        return int(self.pad_offset[row]) + index

    def model_inputs(self, device: torch.device | str | None = None) -> dict[str, Tensor]:
        """``input_ids``, ``attention_mask`` and ``position_ids``, on ``device``."""
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
               "position_ids": self.position_ids}
        if device is not None:
            out = {k: v.to(device) for k, v in out.items()}
        return out


class ChatTemplateError(ValueError):
    """``chat=True`` with a tokenizer that has no chat template."""


def render_prompt(tokenizer: Any, prompt: str, chat: bool = False) -> str:
    """The prompt text the model reads.

    Args:
        tokenizer: the checkpoint's tokenizer (its ``chat_template`` is used with ``chat``).
        prompt: the task prompt (plain text).
        chat: False: the task prompt itself. True: the task prompt as the one user message of
            the tokenizer's chat template, with the assistant's generation prompt
            (``apply_chat_template(..., add_generation_prompt=True)``; for Qwen2.5-Instruct its
            default system turn, ``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n``).

    Raises:
        ChatTemplateError: ``chat`` and the tokenizer has no chat template.
    """
    if not chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            "chat: true but the checkpoint's tokenizer has no chat template (tokenizer_config.json has no "
            "chat_template): set chat: false for checkpoints trained on plain prompts, or save the template "
            "with the checkpoint")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def tokenize(tokenizer: Any, texts: Any, chat: bool = False, **kwargs: Any) -> Any:
    """The one way model-input text becomes token ids, on every path (behaviour, generation, the
    cache, probes and steering, patching, and the training data's check in the tests).

    ``texts`` are already rendered (:func:`render_prompt`, plus :func:`response_separator` and a
    response where there is one). Plain text gets the tokenizer's own special tokens (a BOS for
    tokenizers that prepend one; none for Qwen's or the task's), as TRL's ``SFTTrainer`` and
    ``GRPOTrainer`` tokenize plain prompts; with ``chat`` the template has written them, so none are
    added (as ``apply_chat_template(tokenize=True)``).

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: one text or a list of texts.
        chat: the texts were rendered in the chat template.
        **kwargs: passed on (``return_offsets_mapping``, ``padding``, ``return_tensors``...).

    Returns:
        The tokenizer's ``BatchEncoding``.
    """
    return tokenizer(texts, add_special_tokens=not chat, **kwargs)


def response_separator(chat: bool = False) -> str:
    """What joins a (rendered) prompt and its response: a space for plain prompts, nothing after a
    chat template's generation prompt."""
    return "" if chat else " "


def response_token_id(tokenizer: Any, word: str, chat: bool = False) -> int:
    """The id of the one token ``word`` becomes as the first word of a response: after a space
    for plain prompts (``"F"`` for the task's word-level tokenizer, ``"ĠF"`` for a byte-level BPE),
    right after the generation prompt with ``chat`` (``"F"`` after Qwen's ``assistant\\n``).

    Located by character offsets in ``render_prompt("x") + separator + word``: the tokens that
    end after the prompt must be exactly one, ending at the word's end.

    Raises:
        PositionError: ``word`` is not exactly one token there (the message names the word).
        ChatTemplateError: ``chat`` and the tokenizer has no chat template.
    """
    prefix = render_prompt(tokenizer, "x", chat)
    text = prefix + response_separator(chat) + word
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    hits = [(i, e) for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]) if e > len(prefix) and e > s]
    if len(hits) != 1 or hits[0][1] != len(text):
        where = "after the chat template's generation prompt" if chat else "after a space"
        raise PositionError(f"the word {word!r} is {len(hits)} tokens {where} for this tokenizer; the strategy "
                            "logit difference needs each strategy word to be one token")
    return int(hits[0][0])


class EndTokenError(ValueError):
    """No single token ends a response under this tokenizer (and chat template)."""


@dataclass(frozen=True)
class ResponseEnd:
    """How a response ends in training data, the token generation must stop at.

    Attributes:
        token_id: the end token's id: the tokenizer's ``eos_token`` for plain prompts (TRL's
            ``SFTTrainer`` appends it to each completion), the token the chat template writes after
            an assistant turn's content with ``chat`` (Qwen2.5: ``<|im_end|>``).
        text: what follows the response text, up to and including the end token (``"<eos>"``;
            ``"<|im_end|>"`` for Qwen2.5; ``" <|im_end|>"`` for the word-level synth template).
    """

    token_id: int
    text: str


def response_end(tokenizer: Any, chat: bool = False) -> ResponseEnd:
    """The end token SFT teaches at the end of a response (see :class:`ResponseEnd`).

    With ``chat`` it is read from the chat template: a user turn and an assistant turn are
    rendered, and the first token that starts after the assistant's content is the end token.

    Raises:
        EndTokenError: no ``eos_token`` (plain prompts), or a chat template that writes nothing
            after an assistant turn (SFT would then teach no end, and generation would not stop).
        ChatTemplateError: ``chat`` and the tokenizer has no chat template.
    """
    if not chat:
        if getattr(tokenizer, "eos_token", None) is None or tokenizer.eos_token_id is None:
            raise EndTokenError("the tokenizer has no eos_token, so SFT teaches no end of a response and generation "
                                "never stops: save the tokenizer with an eos_token")
        return ResponseEnd(int(tokenizer.eos_token_id), tokenizer.eos_token)
    render_prompt(tokenizer, "x", True)  # raises ChatTemplateError without a template
    content = "x = y ; ans x"  # task words, so that a word-level task tokenizer spells them
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": content}],
                                         tokenize=False)
    end = text.rindex(content) + len(content)
    enc = tokenize(tokenizer, text, True, return_offsets_mapping=True)
    after = [(i, a, b) for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if a >= end and b > a]
    if not after:
        raise EndTokenError("the chat template writes nothing after an assistant turn's content, so SFT on chat "
                            "messages teaches no end token and generation would not stop: use a template that ends "
                            "each turn with an end-of-turn token (Qwen2.5: <|im_end|>)")
    i, _, b = after[0]
    return ResponseEnd(int(i), text[end:b])


def stop_token_ids(tokenizer: Any, chat: bool = False) -> list[int]:
    """The ids generation (``probes.behaviour.generate``, patched generation) and GRPO stop at: the
    :func:`response_end` token SFT teaches, and the tokenizer's ``eos_token`` when it has one.

    Raises:
        EndTokenError: no end token (see :func:`response_end`).
    """
    ids = [response_end(tokenizer, chat).token_id]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def cut_at_stop(ids: Sequence[int], stops: Sequence[int]) -> list[int]:
    """``ids`` up to (not including) the first stop id: a generated response without its end token
    and whatever a batch generated after it."""
    ids = [int(i) for i in ids]
    cut = next((k for k, i in enumerate(ids) if i in set(int(x) for x in stops)), len(ids))
    return ids[:cut]


def check_end_token(tokenizer: Any, chat: bool, stops: Sequence[int], where: str) -> None:
    """The end token SFT teaches is one of ``stops``, the ids ``where`` stops generating at.

    Raises:
        EndTokenError: it is not (the message names both and the fix).
    """
    end = response_end(tokenizer, chat)
    if end.token_id not in list(stops):
        names = [tokenizer.convert_ids_to_tokens(int(i)) for i in stops]
        raise EndTokenError(
            f"{where} stops generating at {names}, but SFT{' on chat messages' if chat else ''} teaches "
            f"{tokenizer.convert_ids_to_tokens(end.token_id)!r} at the end of a response: a correct response would run "
            f"on past its end and be marked wrong. Stop at activations.batch.stop_token_ids(tokenizer, chat={chat})")


def model_text(prompt: str, response: str | None, chat: bool = False) -> str:
    """The text the model reads: the (rendered) prompt, then the separator
    (:func:`response_separator`) and the response if there is one."""
    return prompt if response is None else prompt + response_separator(chat) + response


def word_char_offsets(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets of each whitespace-separated word of ``text``."""
    out, i = [], 0
    for w in text.split():
        i = text.index(w, i)
        out.append((i, i + len(w)))
        i += len(w)
    return out


_STEP_WORDS: Callable[[str], list[int]] | None = None


def register_step_words(fn: Callable[[str], list[int]] | None,
                        replace: bool = True) -> Callable[[str], list[int]] | None:
    """Register the function that gives the word indices of a response's steps (the ``steps``
    position: where each step's result is predicted; None: no steps). The finite-field task
    registers its own (:func:`probes.task.traces.step_positions`) when it is imported, and
    :func:`probes.tasks.use_task` the current task's; this package knows no task. With
    ``replace=False`` a function already registered is kept. Returns the function registered before."""
    global _STEP_WORDS
    old = _STEP_WORDS
    if replace or old is None:
        _STEP_WORDS = fn
    return old


def _token_at(offsets: list[tuple[int, int]], char: int) -> int | None:
    for i, (start, end) in enumerate(offsets):
        if start <= char < end:
            return i
    return None


def _locate(key: str, prompt: str, response: str | None, offsets: list[tuple[int, int]],
            sep: int = 1) -> tuple[int, list[int]]:
    n = len(prompt)
    prompt_tokens = [i for i, (s, e) in enumerate(offsets) if e > s and s < n]
    if not prompt_tokens:
        raise PositionError(f"{key}: the prompt tokenizes to no tokens; prompt_end is undefined")
    end = prompt_tokens[-1]
    if response is not None and offsets[end][1] > n + sep:
        raise PositionError(
            f"{key}: the last prompt token {offsets[end]} also covers response text, so "
            "prompt_end is undefined for this tokenizer; end prompts with a separate token"
        )
    steps: list[int] = []
    if response is not None and _STEP_WORDS is not None:
        base = n + sep
        words = word_char_offsets(response)
        for w in _STEP_WORDS(response):
            tok = _token_at(offsets, base + words[w][0])
            if tok is None:
                raise PositionError(f"{key}: no token covers response word {w} ({response.split()[w]!r})")
            steps.append(tok)
    return end, steps


def _prompt_word_tokens(key: str, prompt: str, rendered: str, offsets: list[tuple[int, int]]) -> list[int]:
    """The token index of the last character of each word of the task ``prompt`` within the
    ``rendered`` prompt (the prompt itself, or its chat template around it)."""
    base = rendered.rfind(prompt)
    if base < 0:
        raise PositionError(f"{key}: the task prompt does not occur in the rendered prompt, so its words have no "
                            "token positions (a chat template that rewrites the user message)")
    out = []
    for a, e in word_char_offsets(prompt):
        tok = _token_at(offsets, base + e - 1)
        if tok is None:
            raise PositionError(f"{key}: no token covers prompt word {prompt[a:e]!r}")
        out.append(tok)
    return out


def encode_batch(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str | None] | None = None,
    *,
    keys: Sequence[str] | None = None,
    padding_side: str = "left",
    chat: bool = False,
) -> TokenBatch:
    """Tokenize and pad prompts (and teacher-forced responses) into a :class:`TokenBatch`.

    Args:
        tokenizer: a fast Hugging Face tokenizer (offset mappings are required). Its special
            tokens are added as it adds them by default (none for Qwen and the task tokenizer),
            except with ``chat``, where the template writes them.
        prompts: ``batch`` prompt strings.
        responses: ``batch`` responses (None where there is none), or None for no responses.
        keys: ``batch`` row keys used in error messages (default: ``"input {i}"``).
        padding_side: ``"left"`` (default, as for generation) or ``"right"``.
        chat: render each prompt in the tokenizer's chat template (:func:`render_prompt`).

    Returns:
        A :class:`TokenBatch` on the CPU.

    Raises:
        ValueError: an unknown padding side, or lengths of the arguments differ.
        ChatTemplateError: ``chat`` and the tokenizer has no chat template.
        PositionError: a prompt with no tokens, or a prompt/response boundary inside a token.
    """
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"unknown padding side {padding_side!r}: use one of {list(PADDING_SIDES)}")
    n = len(prompts)
    if responses is None:
        responses = [None] * n
    keys = [f"input {i}" for i in range(n)] if keys is None else list(keys)
    if len(responses) != n or len(keys) != n:
        raise ValueError(f"{n} prompts but {len(responses)} responses and {len(keys)} keys")
    if n == 0:
        raise ValueError("an empty batch: pass at least one prompt")
    raw_prompts = list(prompts)
    prompts = [render_prompt(tokenizer, p, chat) for p in prompts]
    sep = response_separator(chat)
    texts = [model_text(p, r, chat) for p, r in zip(prompts, responses)]
    # a chat template writes its own special tokens (a BOS, if the model has one); plain prompts get
    # the tokenizer's defaults (none for Qwen and the task tokenizer)
    enc = tokenize(tokenizer, texts, chat, return_offsets_mapping=True, padding=False, truncation=False)
    ids_list: list[list[int]] = enc["input_ids"]
    lengths = [len(x) for x in ids_list]
    width = max(lengths)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    input_ids = torch.full((n, width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    pad_offset = torch.zeros(n, dtype=torch.long)
    ends, steps, words = [], [], []
    for b in range(n):
        off = width - lengths[b] if padding_side == "left" else 0
        pad_offset[b] = off
        input_ids[b, off:off + lengths[b]] = torch.tensor(ids_list[b], dtype=torch.long)
        mask[b, off:off + lengths[b]] = 1
        end, st = _locate(keys[b], prompts[b], responses[b], enc["offset_mapping"][b], len(sep))
        ends.append(end)
        steps.append(st)
        words.append(_prompt_word_tokens(keys[b], raw_prompts[b], prompts[b], enc["offset_mapping"][b]))
    position_ids = mask.cumsum(-1) - 1
    position_ids.masked_fill_(mask == 0, 1)
    return TokenBatch(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=position_ids,
        lengths=torch.tensor(lengths, dtype=torch.long),
        pad_offset=pad_offset,
        prompt_end=torch.tensor(ends, dtype=torch.long),
        steps=steps,
        has_response=[r is not None for r in responses],
        keys=keys,
        padding_side=padding_side,
        prompt_words=words,
    )
