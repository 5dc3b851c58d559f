"""The task interface: what the pipeline needs from a controlled reasoning task, and nothing more.

The paper's method ("Select and Improve", arXiv 2606.13125), and this suite's, needs a task whose
problems can be solved by two named strategies, each announced by the first word of the response,
with a verifier and a labeller. Everything else (behaviour, caching, probes, patching, the verdict)
is generic. A task is any object with the members of :class:`Task`; its problems have the members
of :class:`TaskProblem`. The finite-field task (:mod:`probes.task`) is one implementation
(:class:`probes.task.adapter.FiniteFieldTask`); :mod:`probes.tasks.addition` is a second, small one
and the interface's worked example.

Selecting a task: ``task: module:Name`` in a run config, or ``python -m probes.run --task
module:Name`` (:func:`load_task`); the default is :data:`DEFAULT_TASK`. The stage modules import this
module, never a task's own (an import-linter contract in ``pyproject.toml``).

Required members (:data:`REQUIRED`) and what they are used for:

- ``name`` (str): shown in the report.
- ``strategies``: ``("forward", "backward")``, the paper's names for the two strategies (a task
  decides what each means), and ``strategy_words`` (``{strategy: first response word}``, e.g.
  ``{"forward": "F", "backward": "B"}``, two different words): the strategy choice is the first
  response token, so P(strategy) is read exactly from one forward pass.
- ``types`` (two str): the problem types. Probes predict the strategy propensity *within* a type;
  the decomposition is reported per type.
- ``sample_problems(n, seed, lengths) -> list[TaskProblem]``: ``n`` held-out problems drawn
  reproducibly from ``seed``, stratified by the task's own strata, with chain lengths (difficulty)
  from ``lengths``.
- ``problem_from_dict(d) -> TaskProblem``: the inverse of ``TaskProblem.to_dict`` (raises
  ``KeyError``/``ValueError`` on a bad record).
- ``verify(problem, response) -> Verdict`` (:class:`Verdict`; at least ``correct``, a bool, and
  ``strategy``, a strategy or ``"unparseable"``).
- ``label(response) -> str``: the strategy a response follows, or ``"unparseable"``.
- ``vocabulary() -> list[str]``: every word of prompts and responses, special tokens excluded (the
  word-level tokenizer of random tiny checkpoints, :func:`word_tokenizer`, and the generation budget
  in tokens).
- ``max_response_words(length) -> int``: an upper bound on a correct response's length in words for
  a problem of that length (the generation budget).
- ``surface_features(problem) -> dict[str, str]``: categorical prompt-surface features (e.g.
  ``{"type x length": "evaluation|k3"}``); each becomes a surface baseline of the probes.

Optional members (:data:`OPTIONAL`), each unlocking a part of the pipeline:

- ``canonical_response(problem, strategy) -> str``: the response a strategy gives when executed
  correctly. Unlocks exact forced accuracy (the probability of the canonical trace) and the patching
  stage (its mechanistic decomposition needs each strategy's forced accuracy under patching).
  Without it: sampled forced accuracy, and the patching stage is skipped (recoveries undefined).
- ``twin(problem) -> TaskProblem``: a counterfactual problem of the same length and tokens but the
  other type. Unlocks counterfactual and attribution (within-model) patching. Without it: those are
  skipped. (The probes' splits keep a problem and its twin on one side through ``chain_id``.)
- ``prompt_slots``: ``((name, word_index), ...)``, named prompt words at fixed indices (negative:
  from the last word), in prompt order, for the probes' position x layer map. Without it: the map
  has the prompt end only.
- ``step_positions(response) -> list[int]``: word indices of each executed step of a trace (the
  ``steps`` position).
- ``natural_strategy``: ``{type: strategy}``, the cheap strategy of each type (probe targets).
- ``parse_prompt(prompt) -> TaskProblem``: a problem from its prompt text (labels from plain task
  records that carry only ``id`` and ``prompt``).
- ``surface_identity(problem) -> str``: the problem's surface identity for the probes' control task
  (Hewitt and Liang 2019); without it, its surface features joined.
- ``step_values(problem, strategy) -> list[int]``: the value each step of the canonical trace
  computes (the ``step_value`` probe target).

Example (the shape of a minimal task; :mod:`probes.tasks.addition` is a complete one)::

    class MyTask:
        name = "my task"
        strategies = ("forward", "backward")
        strategy_words = {"forward": "F", "backward": "B"}
        types = ("a", "b")
        def sample_problems(self, n, seed, lengths): ...
        def problem_from_dict(self, d): ...
        def verify(self, problem, response): ...
        def label(self, response): ...
        def vocabulary(self): ...
        def max_response_words(self, length): ...
        def surface_features(self, problem): ...

    python -m probes.run --quick --task mypackage.mytask:MyTask --pre-rl SFT --post-rl RL
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

DEFAULT_TASK = "probes.task.adapter:FiniteFieldTask"
"""The task of the shipped organism: finite-field arithmetic with relabelled numerals."""

UNPARSEABLE = "unparseable"
"""The label of a response that follows no strategy."""
STRATEGIES: tuple[str, str] = ("forward", "backward")
"""The two strategies' names in every task (what they mean is the task's)."""

REQUIRED: tuple[str, ...] = ("name", "strategies", "strategy_words", "types", "sample_problems",
                             "problem_from_dict", "verify", "label", "vocabulary", "max_response_words",
                             "surface_features")
"""The members every task has."""
OPTIONAL: dict[str, str] = {
    "canonical_response": "exact forced accuracy and the patching stage",
    "twin": "counterfactual and attribution patching",
    "prompt_slots": "the probes' position x layer map over named prompt words",
    "step_positions": "the 'steps' position (each executed step of a trace)",
    "natural_strategy": "the 'natural' trace-strategy probe target",
    "parse_prompt": "labels from plain task records (id and prompt)",
    "surface_identity": "the probes' control task by surface identity (else the surface features)",
    "step_values": "the step_value probe target",
}
"""The optional members, and what each unlocks."""


@dataclass
class Verdict:
    """A verifier's result for one response (what a task's ``verify`` returns).

    Attributes:
        strategy: ``forward``, ``backward`` or :data:`UNPARSEABLE`.
        parseable: the text follows the grammar of a strategy valid for this problem.
        steps_correct: per written step, whether it is right (the task says what a step is).
        answer: the written answer (its words; None if unparseable).
        answer_correct: the written answer equals the exact answer.
        correct: parseable, every step right and the answer right.
        error: the first problem found, or None.
    """

    strategy: str
    parseable: bool
    steps_correct: list[bool] = field(default_factory=list)
    answer: str | None = None
    answer_correct: bool = False
    correct: bool = False
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class TaskError(ValueError):
    """A task that cannot be loaded or lacks a required member; the message names it and the fix."""


@runtime_checkable
class TaskProblem(Protocol):
    """One problem of a task.

    Attributes:
        id: a stable id (the same problem always has it; distinct problems have distinct ids).
        prompt: the prompt text, whitespace-separated words.
        type: one of the task's ``types``.
        length: the chain length (difficulty), an int >= 1.
        stratum: the name of the problem's stratum (e.g. ``"evaluation/k3/p11"``); the
            decomposition is reported per stratum and patching subsets are stratified by it.
        chain_id: shared by a problem and its twin (the probes' splits group by it).
    """

    @property
    def id(self) -> str: ...
    @property
    def prompt(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def length(self) -> int: ...
    @property
    def stratum(self) -> str: ...
    @property
    def chain_id(self) -> str: ...
    def to_dict(self) -> dict: ...


class Task(Protocol):
    """The members of a task (see the module docstring for what each is used for)."""

    name: str
    strategies: tuple[str, str]  # STRATEGIES
    strategy_words: dict[str, str]
    types: tuple[str, ...]

    def sample_problems(self, n: int, seed: int, lengths: Sequence[int]) -> list[TaskProblem]: ...
    def problem_from_dict(self, d: dict) -> TaskProblem: ...
    def verify(self, problem: TaskProblem, response: str) -> Any: ...
    def label(self, response: str) -> str: ...
    def vocabulary(self) -> list[str]: ...
    def max_response_words(self, length: int) -> int: ...
    def surface_features(self, problem: TaskProblem) -> dict[str, str]: ...


def has(task: Any, member: str) -> bool:
    """Whether ``task`` has the optional ``member`` (an attribute that is not None)."""
    return getattr(task, member, None) is not None


METHODS: frozenset[str] = frozenset({"sample_problems", "problem_from_dict", "verify", "label", "vocabulary",
                                     "max_response_words", "surface_features", "canonical_response", "twin",
                                     "step_positions", "parse_prompt", "surface_identity", "step_values"})
"""The members that are called (they must be callable when present)."""


def missing(task: Any) -> list[str]:
    """The required members ``task`` lacks, or has but cannot call (empty: it is a task)."""
    return [m for m in REQUIRED if getattr(task, m, None) is None
            or (m in METHODS and not callable(getattr(task, m)))]


def check_task(task: Any, spec: str = "the task") -> Any:
    """``task`` if it has every required member and two strategies with distinct first words.

    Raises:
        TaskError: naming the first missing member (and the others), or a bad strategy set.
    """
    gone = missing(task)
    if gone:
        raise TaskError(f"{spec} has no {gone[0]} (a task needs {', '.join(REQUIRED)}, the methods callable; "
                        f"missing: {', '.join(gone)}); see probes.tasks")
    bad = [m for m in OPTIONAL if m in METHODS and has(task, m) and not callable(getattr(task, m))]
    if bad:
        raise TaskError(f"{spec}: {bad[0]} is not callable (set it to a method, or to None to turn it off)")
    strategies = tuple(task.strategies)
    words = [task.strategy_words.get(s) for s in strategies]
    if strategies != STRATEGIES or None in words or len(set(words)) != 2:
        raise TaskError(f"{spec}: strategies {strategies} with first words {words}: a task has the strategies "
                        f"{STRATEGIES} (named as in the paper) whose first response words differ")
    if len(tuple(task.types)) != 2 or len(set(task.types)) != 2:
        raise TaskError(f"{spec}: types {tuple(task.types)}: a task has two problem types (the paper's evaluation "
                        "and inversion; the type probe is binary)")
    return task


_LOADED: dict[str, Any] = {}


def load_task(spec: str | None = None) -> Any:
    """The task named by ``spec`` (``"module:Name"``; None: :data:`DEFAULT_TASK`), instantiated when
    ``Name`` is a class, checked (:func:`check_task`) and cached per spec.

    Raises:
        TaskError: a spec without ``:``, a module that does not import, a missing name, or a task
            that lacks a required member (the message names it).
    """
    spec = spec or DEFAULT_TASK
    if spec in _LOADED:
        return _LOADED[spec]
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise TaskError(f"task {spec!r}: write it as module:Name, e.g. probes.tasks.addition:AdditionTask")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - a user's module may raise anything while importing
        raise TaskError(f"task {spec!r}: cannot import {mod_name} ({type(e).__name__}: {e})") from None
    if not hasattr(mod, attr):
        raise TaskError(f"task {spec!r}: {mod_name} has no {attr}")
    obj = getattr(mod, attr)
    try:
        obj = obj() if isinstance(obj, type) else obj
    except Exception as e:  # noqa: BLE001 - a user's class may raise anything
        raise TaskError(f"task {spec!r}: cannot instantiate {attr}() ({type(e).__name__}: {e}); a task class "
                        "must build without arguments, or give an instance") from None
    task = check_task(obj, f"task {spec}")
    _LOADED[spec] = task
    return task


_CURRENT: list[Any] = []


def current_task() -> Any:
    """The task the pipeline is running (set by :func:`use_task`; :data:`DEFAULT_TASK` outside one).

    The stage modules ask for it where they need the task (prompts, strategies, the verifier, the
    labeller, canonical responses, twins), so that no stage imports a task's own module; a run sets
    it from its config (``task``) for its whole duration.
    """
    return _CURRENT[-1] if _CURRENT else load_task(DEFAULT_TASK)


@contextmanager
def use_task(task: Any) -> Iterator[Any]:
    """Make ``task`` (a task object or a ``module:Name`` spec) the :func:`current_task` inside the
    block, with its ``step_positions`` as the ``steps`` position
    (:func:`activations.batch.register_step_words`); nested blocks restore the outer one.

    Raises:
        TaskError: as :func:`load_task`.
    """
    from activations.batch import register_step_words

    task = load_task(task) if isinstance(task, str) or task is None else check_task(task)
    _CURRENT.append(task)
    before = register_step_words(getattr(task, "step_positions", None))  # the 'steps' position reads this task
    try:
        yield task
    finally:
        register_step_words(before)
        _CURRENT.pop()


def run_with_task(spec: str | None, fn: Callable[[], int]) -> int:
    """``fn()`` with the task ``spec`` current (:func:`use_task`), for a command line's ``--task``:
    a task that cannot be loaded, or a :class:`TaskError` while running, is one ``error:`` line on
    stderr and exit status 2."""
    import sys

    try:
        with use_task(spec):
            return fn()
    except TaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def strategy_ids(tokenizer: Any, task: Any, chat: bool = False) -> list[int]:
    """The token id of each strategy's first word, in ``task.strategies`` order, as the first
    response token (:func:`activations.batch.response_token_id`).

    Raises:
        TaskError: a strategy word that is not one token for this tokenizer (the strategy could not
            be read from one forward pass).
    """
    from activations.batch import response_token_id

    try:
        ids = [response_token_id(tokenizer, task.strategy_words[s], chat) for s in task.strategies]
    except ValueError as e:
        raise TaskError(f"{task.name}: {e} (a task's strategy words must each be one token of the checkpoints' "
                        "tokenizer)") from None
    unk = getattr(tokenizer, "unk_token_id", None)
    if len(set(ids)) < len(ids) or (unk is not None and unk in ids):
        raise TaskError(f"{task.name}: the strategy words {[task.strategy_words[s] for s in task.strategies]} are "
                        f"token ids {ids} for this tokenizer (unknown or equal): the checkpoints were not trained "
                        "on this task")
    return ids


def unknown_words(tokenizer: Any, task: Any) -> list[str]:
    """The words of ``task.vocabulary()`` that ``tokenizer`` maps to its unknown token (empty for a
    tokenizer without one, such as byte-level BPE)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    return [w for w in task.vocabulary() if unk in tokenizer(" " + w, add_special_tokens=False)["input_ids"]]


SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<eos>")
"""The special tokens of :func:`word_tokenizer` (ids 0-3)."""


def word_tokenizer(words: Sequence[str]):
    """A word-level ``PreTrainedTokenizerFast``: :data:`SPECIAL_TOKENS` then ``words`` (ids in that
    order, duplicates dropped), split on whitespace, decoded with single spaces and no clean-up.
    No BOS or EOS is added by ``encode``.

    Raises:
        ValueError: no words.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_list = list(dict.fromkeys([*SPECIAL_TOKENS, *words]))
    if len(vocab_list) == len(SPECIAL_TOKENS):
        raise ValueError("a word tokenizer needs at least one word")
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab_list)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                   eos_token="<eos>", clean_up_tokenization_spaces=False)
    fast.padding_side = "left"
    fast.model_max_length = 512
    return fast


def surface_identity(task: Any, problem: Any) -> str:
    """``task.surface_identity(problem)``, or its surface features joined when it has none."""
    if has(task, "surface_identity"):
        return task.surface_identity(problem)
    return "|".join(f"{k}={v}" for k, v in sorted(task.surface_features(problem).items()))


def first_word_strategy(task: Any, text: str) -> str:
    """The strategy named by the first word of ``text`` alone (:data:`UNPARSEABLE` if none);
    ``task``: a task, or its ``strategy_words`` mapping."""
    words = text.split()
    strategy_words = task if isinstance(task, dict) else task.strategy_words
    by_word = {w: s for s, w in strategy_words.items()}
    return by_word.get(words[0], UNPARSEABLE) if words else UNPARSEABLE
