import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIERS = ("unit", "integration", "acceptance")
"""The test tiers, as TransformerLens has them: each test module declares one with
``pytestmark = pytest.mark.<tier>``; ``make test`` runs all three, ``make test-unit`` (and
``-integration``, ``-acceptance``) one."""


def pytest_collection_modifyitems(config, items):
    """Every test belongs to exactly one tier (a module without one is a collection error that
    names it and the fix)."""
    bad = sorted({(item.nodeid.split("::")[0], tuple(t for t in TIERS if item.get_closest_marker(t)))
                  for item in items if sum(item.get_closest_marker(t) is not None for t in TIERS) != 1})
    if bad:
        raise pytest.UsageError("every test module needs exactly one tier marker (pytestmark = pytest.mark.unit, "
                                ".integration or .acceptance): " + ", ".join(f"{f} has {list(t) or 'none'}" for f, t in bad))


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """One ``python -m probes.run --quick`` of the shipped pair (sft-fb -> rl-fb-hard), run once
    per session and shared (read-only: copy it before writing into it). Attributes: ``out`` (the
    run folder), ``stdout``, ``stderr``."""
    out = tmp_path_factory.mktemp("quick") / "run"
    r = subprocess.run([sys.executable, "-m", "probes.run", "--quick", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return SimpleNamespace(out=out, stdout=r.stdout, stderr=r.stderr)


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""Qwen2.5's ChatML turns (without its default system prompt)."""


def qwen_like_tokenizer(eos: str = "<|endoftext|>", vocab_size: int = 330):
    """A byte-level BPE tokenizer trained here on task text (so some task words split into several
    tokens, as in Qwen's), with Qwen's special tokens and a ChatML chat template; ``eos`` is its
    ``eos_token`` (Qwen2.5-Instruct: ``<|im_end|>``; the base model: ``<|endoftext|>``)."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from probes.task.problems import random_problem
    from probes.task.traces import make_trace

    rng = random.Random(0)
    texts = []
    for i in range(300):
        p = random_problem(rng, (11, 13)[i % 2], ("evaluation", "inversion")[i // 2 % 2], 1 + i % 4)
        texts += [p.prompt + " " + make_trace(p, s) for s in ("forward", "backward")]  # responses after a space
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                                        "<|im_end|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, pad_token="<|endoftext|>",
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = CHATML
    return fast


def without_merges(tok, word: str):
    """A copy of a byte-level BPE ``tok`` that spells ``" " + word`` byte by byte (every merge that
    builds a piece of it is dropped; other words keep their tokens)."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tok.backend_tokenizer.to_str())
    target = "Ġ" + word
    pieces = {target[i:j] for i in range(len(target)) for j in range(i + 2, len(target) + 1)}
    merges = spec["model"]["merges"]
    spec["model"]["merges"] = [m for m in merges if "".join(m.split(" ") if isinstance(m, str) else m) not in pieces]
    out = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token=tok.eos_token,
                                  pad_token=tok.pad_token, clean_up_tokenization_spaces=False)
    out.chat_template = tok.chat_template
    return out
