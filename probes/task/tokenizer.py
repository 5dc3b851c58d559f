"""The word-level tokenizer of the task, built with the ``tokenizers`` library.

One token per word of the task vocabulary (fields, problem types, operations, numerals,
punctuation, strategy words) plus the special tokens ``<pad>``, ``<unk>``, ``<bos>``, ``<eos>``.
It is saved as a Hugging Face ``PreTrainedTokenizerFast`` (``tokenizer.json``), so any
``AutoTokenizer.from_pretrained(DIR)`` loads it. Decoding joins words with single spaces and
never "cleans up" spaces, so ``decode(encode(text)) == text`` for every canonical task text.
"""

from __future__ import annotations

from pathlib import Path

from probes.task.field import SUPPORTED_FIELDS, SYMBOL_POOL
from probes.task.problems import OPS, TYPE_WORD
from probes.task.traces import STRATEGY_TOKEN

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<eos>")
PUNCTUATION: tuple[str, ...] = (":", ",", ";", "=", "?")
WORDS: tuple[str, ...] = ("x", "y", "m", "b", "ans", "div")


def vocabulary() -> list[str]:
    """The task vocabulary in id order (special tokens first); stable across releases."""
    vocab = list(SPECIAL_TOKENS)
    vocab += [f"p{p}" for p in SUPPORTED_FIELDS]
    vocab += list(TYPE_WORD.values())
    vocab += list(PUNCTUATION) + list(OPS) + list(WORDS)
    vocab += list(STRATEGY_TOKEN.values()) + list(SYMBOL_POOL)
    assert len(vocab) == len(set(vocab)), "duplicate word in the task vocabulary"
    return vocab


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` over :func:`vocabulary` (word level, whitespace split;
    :func:`probes.tasks.word_tokenizer`).

    Returns:
        transformers.PreTrainedTokenizerFast with ``pad``, ``unk``, ``bos``, ``eos`` set and
        ``clean_up_tokenization_spaces=False``. No BOS/EOS is added by ``encode``; training
        appends ``<eos>`` to responses itself.
    """
    from probes.tasks import SPECIAL_TOKENS as GENERIC, word_tokenizer

    assert GENERIC == SPECIAL_TOKENS
    return word_tokenizer(vocabulary())


def save_tokenizer(out_dir: str | Path):
    """Build the tokenizer and save it (``tokenizer.json`` and config files) into ``out_dir``."""
    tok = build_tokenizer()
    tok.save_pretrained(str(out_dir))
    return tok
