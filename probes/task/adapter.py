"""The finite-field task behind the task interface (:mod:`probes.tasks`).

:class:`FiniteFieldTask` is how the pipeline sees :mod:`probes.task`: evaluation and inversion
problems over GF(11) and GF(13) with relabelled numerals, the forward and backward strategies
(first words ``F`` and ``B``), the verifier and the labeller, canonical traces (exact forced
accuracy, patching's trace positions), twins (the same chain posed as the other type), the prompt
slots of the probes' map and the step positions. It has every optional member.
"""

from __future__ import annotations

import random
from typing import Sequence

from probes.task.problems import PROMPT_SLOTS, TYPES, Problem, parse_prompt, random_problem
from probes.task.tokenizer import SPECIAL_TOKENS, vocabulary
from probes.task.traces import NATURAL_STRATEGY, STRATEGIES, STRATEGY_TOKEN, make_trace, step_positions
from probes.task.verify import label, verify


class FiniteFieldTask:
    """Finite-field arithmetic with relabelled numerals ("Select and Improve", arXiv 2606.13125).

    Attributes: as :class:`probes.tasks.Task`, with ``fields`` (the primes problems are drawn
    over, default ``(11, 13)``).
    """

    name = "finite-field arithmetic (GF(11), GF(13); relabelled numerals)"
    strategies = STRATEGIES
    strategy_words = STRATEGY_TOKEN
    types = TYPES
    natural_strategy = NATURAL_STRATEGY
    prompt_slots = PROMPT_SLOTS

    def __init__(self, fields: tuple[int, ...] = (11, 13)):
        self.fields = tuple(fields)

    def sample_problems(self, n: int, seed: int, lengths: Sequence[int]) -> list[Problem]:
        """``n`` distinct problems: stratified round-robin over field x type x length, from a seed
        stream separate from every training stream (``eval-SEED``).

        Raises:
            ValueError: a cell has fewer distinct problems than it is asked for (k = 1 cells hold
                about 3 x p x p).
        """
        rng = random.Random(f"eval-{seed}")
        cells = [(f, t, k) for k in lengths for t in TYPES for f in self.fields]
        out, seen = [], set()
        for i in range(n):
            for _ in range(1000):  # distinct problems: rows downstream are keyed by problem id
                p = random_problem(rng, *cells[i % len(cells)])
                if p.id not in seen:
                    break
            else:
                raise ValueError(f"cannot draw {n} distinct problems over {len(cells)} cells of steps {list(lengths)}: "
                                 f"cell {cells[i % len(cells)]} is exhausted; ask for fewer problems or longer chains")
            seen.add(p.id)
            out.append(p)
        return out

    def problem_from_dict(self, d: dict) -> Problem:
        return Problem.from_dict(d)

    def verify(self, problem: Problem, response: str):
        return verify(problem, response)

    def label(self, response: str) -> str:
        return label(response)

    def vocabulary(self) -> list[str]:
        return [w for w in vocabulary() if w not in SPECIAL_TOKENS]

    def max_response_words(self, length: int) -> int:
        """An upper bound on a correct trace's length in words for a chain of ``length``."""
        return 8 * length + 26

    def surface_features(self, problem: Problem) -> dict[str, str]:
        """The prompt-surface baselines of the probes: type x field and type x chain length."""
        return {"type x field": f"{problem.type}|p{problem.field}", "type x chain length": f"{problem.type}|k{problem.steps}"}

    def canonical_response(self, problem: Problem, strategy: str) -> str:
        return make_trace(problem, strategy)

    def twin(self, problem: Problem) -> Problem:
        return problem.twin()

    def step_positions(self, response: str) -> list[int]:
        return step_positions(response)

    def parse_prompt(self, prompt: str) -> Problem:
        return parse_prompt(prompt)

    def surface_identity(self, problem: Problem) -> str:
        """The chain's field and operation names in order (``p13:add,mul,sub``)."""
        return f"p{problem.field}:" + ",".join(op for op, _ in problem.ops)

    def step_values(self, problem: Problem, strategy: str) -> list[int]:
        """The value in GF(p) each step of ``strategy``'s trace computes (the first numeral after each
        step's ``=``; for a map trace's composition step, ``m``)."""
        words = make_trace(problem, strategy).split()
        return [problem.F.val(words[i + 1] if words[i + 1] not in ("m",) else words[i + 2])
                for i in step_positions(" ".join(words))]
