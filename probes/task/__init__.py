"""The finite-field task of "Select and Improve" (arXiv 2606.13125), as instantiated here.

See the module docstrings: :mod:`~probes.task.field`
(GF(p) and the numeral bijection), :mod:`~probes.task.problems` (chains, prompts, ids),
:mod:`~probes.task.traces` (forward and backward traces), :mod:`~probes.task.verify` (the
verifier and the labeller), :mod:`~probes.task.tokenizer` (the word-level tokenizer),
:mod:`~probes.task.records` and :mod:`~activations.io` (records on disk).
"""

from probes.task.field import SUPPORTED_FIELDS, Field, UnknownFieldError, get_field
from probes.task.problems import OPS, TYPES, Problem, parse_prompt, random_problem, sample_problems
from probes.task.records import make_record, problem_of, sample_records
from probes.task.traces import NATURAL_STRATEGY, STRATEGIES, STRATEGY_TOKEN, make_trace
from probes.task.verify import UNPARSEABLE, Verdict, first_token_strategy, label, verify

__all__ = [
    "SUPPORTED_FIELDS", "Field", "UnknownFieldError", "get_field",
    "OPS", "TYPES", "Problem", "parse_prompt", "random_problem", "sample_problems",
    "make_record", "problem_of", "sample_records",
    "NATURAL_STRATEGY", "STRATEGIES", "STRATEGY_TOKEN", "make_trace",
    "UNPARSEABLE", "Verdict", "first_token_strategy", "label", "verify",
]
