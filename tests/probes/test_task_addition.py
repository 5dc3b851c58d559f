import pytest

pytestmark = pytest.mark.unit

# Specification of the addition task (probes.tasks.addition), the task interface's worked example.

import json
import random

from probes.tasks import OPTIONAL, REQUIRED, UNPARSEABLE, TaskError, check_task, has, load_task
from probes.tasks.addition import (
    BORROW_WORDS,
    CARRY_WORDS,
    PROMPT_SLOTS,
    STRATEGIES,
    TYPES,
    AdditionProblem,
    AdditionTask,
    parse_prompt,
)

TASK = AdditionTask()
LENGTHS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def problems():
    """300 problems over both types and lengths 1-4, and their twins."""
    ps = TASK.sample_problems(300, seed=0, lengths=LENGTHS)
    return ps + [p.twin() for p in ps]


def _digit_positions(words):
    return [i for i, w in enumerate(words) if w.isdigit()]


# --- the interface --------------------------------------------------------------------------


def test_the_task_passes_check_task_loads_by_spec_and_has_every_optional_member():
    assert check_task(TASK) is TASK
    loaded = load_task("probes.tasks.addition:AdditionTask")
    assert isinstance(loaded, AdditionTask)
    assert all(has(loaded, m) for m in REQUIRED + tuple(OPTIONAL)), [m for m in OPTIONAL if not has(loaded, m)]
    assert loaded.strategy_words == {"forward": "R", "backward": "L"}
    assert set(loaded.natural_strategy) == set(loaded.types) == {"sum", "missing"}
    assert set(loaded.natural_strategy.values()) <= set(loaded.strategies)


def test_a_task_without_label_is_a_task_error_naming_label():
    class NoLabel(AdditionTask):
        label = None

    with pytest.raises(TaskError, match="label"):
        check_task(NoLabel())


# --- traces, verifier, labeller --------------------------------------------------------------


def test_both_canonical_traces_verify_with_their_strategy_and_label(problems):
    for p in problems:
        for s in STRATEGIES:
            r = TASK.canonical_response(p, s)
            v = TASK.verify(p, r)
            assert v.correct and v.parseable and v.strategy == s, (p.prompt, r, v)
            assert all(v.steps_correct) and len(v.steps_correct) == p.length + 1
            assert v.answer == p.answer_words and v.answer_correct
            assert TASK.label(r) == s
            assert r.split()[0] == TASK.strategy_words[s]
            assert json.loads(json.dumps(v.to_dict()))["correct"] is True


def test_docstring_examples_are_the_canonical_traces():
    sum_, missing = AdditionProblem("sum", 2, 47, 85), AdditionProblem("missing", 2, 47, 85)
    assert sum_.prompt == "sum : 0 4 7 , 0 8 5 ?" and missing.prompt == "missing : 0 4 7 , 1 3 2 ?"
    assert TASK.canonical_response(sum_, "forward") == "R 7 5 c0 = 2 c1 ; 4 8 c1 = 3 c1 ; 0 0 c1 = 1 c0 ; ans 1 3 2"
    assert TASK.canonical_response(sum_, "backward") == "L 0 0 = 0 ; 4 8 = 1 2 ; 7 5 = 1 3 2 ; ans 1 3 2"
    assert TASK.canonical_response(missing, "forward") == "R 2 7 b0 = 5 b1 ; 3 4 b1 = 8 b1 ; 1 0 b1 = 0 b0 ; ans 0 8 5"
    assert TASK.canonical_response(missing, "backward") == "L 1 0 = 1 ; 3 4 = 0 9 ; 2 7 = 0 8 5 ; ans 0 8 5"
    assert sum_.answer == 132 and missing.answer == 85
    for k in LENGTHS:
        for s in STRATEGIES:
            p = AdditionProblem("sum", k, 0, 0)
            assert len(TASK.canonical_response(p, s).split()) <= TASK.max_response_words(k)
    with pytest.raises(ValueError, match="strategy"):
        TASK.canonical_response(sum_, "sideways")


def test_corrupting_any_one_step_result_makes_the_trace_incorrect(problems):
    rng = random.Random(1)
    for p in problems[::3]:
        for s in STRATEGIES:
            words = TASK.canonical_response(p, s).split()
            pos = TASK.step_positions(" ".join(words))
            j = rng.randrange(len(pos))
            i = pos[j] + 1  # the result word (forward: the digit; backward: the leading digit)
            words[i] = rng.choice([d for d in "0123456789" if d != words[i]])
            v = TASK.verify(p, " ".join(words))
            assert not v.correct and v.strategy == s, (p.prompt, " ".join(words))
            assert v.steps_correct[j] is False


def test_every_single_word_corruption_of_a_digit_or_carry_is_caught(problems):
    rng = random.Random(2)
    swap = {CARRY_WORDS[0]: CARRY_WORDS[1], CARRY_WORDS[1]: CARRY_WORDS[0],
            BORROW_WORDS[0]: BORROW_WORDS[1], BORROW_WORDS[1]: BORROW_WORDS[0]}
    for p in problems[::5]:
        for s in STRATEGIES:
            words = TASK.canonical_response(p, s).split()
            for i, w in enumerate(words):
                if w.isdigit():
                    bad = words[:i] + [rng.choice([d for d in "0123456789" if d != w])] + words[i + 1:]
                elif w in swap:
                    bad = words[:i] + [swap[w]] + words[i + 1:]
                else:
                    continue
                assert not TASK.verify(p, " ".join(bad)).correct, (p.prompt, " ".join(bad))


def test_a_wrong_answer_or_another_problems_trace_is_incorrect(problems):
    for p in problems[:40]:
        for s in STRATEGIES:
            words = TASK.canonical_response(p, s).split()
            words[-1] = str((int(words[-1]) + 1) % 10)
            v = TASK.verify(p, " ".join(words))
            assert v.parseable and all(v.steps_correct) and not v.answer_correct and not v.correct
            assert v.strategy == s and v.error == "the answer is not the last step's result"
            # a correct trace of another problem (same type and length) does not verify here
            other = AdditionProblem(p.type, p.length, (p.a + 1) % 10 ** p.length, p.b)
            assert not TASK.verify(p, TASK.canonical_response(other, s)).correct
            # nor does the twin's (the other type's) trace, except 0 + 0 where both traces coincide
            if (p.a, p.b) != (0, 0):
                assert not TASK.verify(p, TASK.canonical_response(p.twin(), s)).correct
    zero = AdditionProblem("missing", 1, 0, 0)
    assert TASK.canonical_response(zero, "backward") == TASK.canonical_response(zero.twin(), "backward")


def test_a_forgotten_carry_or_borrow_is_a_wrong_step_even_when_the_step_adds_up():
    # every column computed on its own, the carry (borrow) from the right dropped: the schoolbook slip
    for p, expected in [(AdditionProblem("sum", 2, 47, 85), "R 7 5 c0 = 2 c1 ; 4 8 c0 = 2 c1 ; 0 0 c0 = 0 c0 ; ans 0 2 2"),
                        (AdditionProblem("missing", 2, 47, 85), "R 2 7 b0 = 5 b1 ; 3 4 b0 = 9 b1 ; 1 0 b0 = 1 b0 ; ans 1 9 5")]:
        v = TASK.verify(p, expected)
        assert v.parseable and v.strategy == "forward" and not v.correct
        assert v.steps_correct == [True, False, False]
    # a backward trace that restarts from 0 instead of its previous result: only the last step is wrong
    v = TASK.verify(AdditionProblem("sum", 2, 47, 85), "L 0 0 = 0 ; 4 8 = 1 2 ; 7 5 = 0 1 2 ; ans 0 1 2")
    assert v.steps_correct == [True, True, False] and not v.correct


@pytest.mark.parametrize("text", [
    "", "   ", "hello world", "R", "L", "F 7 5 c0 = 2 c1 ; ans 2", "R ; ans", "R ans 1 2",
    "R 7 5 c0 = 2 c1 ; 4 8 c1 = 3 c1 ; 0 0 c1 = 1 c0",             # no answer
    "R 7 5 c0 = 2 c1 ; 4 8 c1 = 3 c1 ; 0 0 c1 = 1 c0 ; ans 1 3",    # answer shorter than the steps
    "R 7 5 c0 = 2 b1 ; 4 8 c1 = 3 c1 ; 0 0 c1 = 1 c0 ; ans 1 3 2",  # carries and borrows mixed
    "R 7 5 = 2 c1 ; ans 2",                                          # no carry in
    "L 0 0 = 0 ; 4 8 = 12 ; 7 5 = 1 3 2 ; ans 1 3 2",               # a non-digit word
    "L 0 0 = 0 ; 4 8 = 1 2 ; 7 5 = 1 3 ; ans 1 3 2",                # step 3 with 2 digits
    "L 0 0 = 0 ; 4 8 = 1 2 ; 7 5 = 1 3 2 ; ans 1 3 2 extra",
    "L 7 5 c0 = 2 c1 ; 4 8 c1 = 3 c1 ; 0 0 c1 = 1 c0 ; ans 1 3 2",  # a forward trace announced as L
])
def test_garbage_empty_and_malformed_text_is_unparseable(text):
    assert TASK.label(text) == UNPARSEABLE
    v = TASK.verify(AdditionProblem("sum", 2, 47, 85), text)
    assert v.strategy == UNPARSEABLE and not v.correct and not v.parseable and v.error
    assert set(v.to_dict()) >= {"strategy", "correct"}


def test_a_well_formed_trace_of_the_wrong_width_or_family_is_labelled_but_not_correct():
    p = AdditionProblem("missing", 2, 47, 85)
    sum_trace = TASK.canonical_response(p.twin(), "forward")  # carry words on a missing problem
    assert TASK.label(sum_trace) == "forward"
    v = TASK.verify(p, sum_trace)
    assert v.strategy == "forward" and not v.parseable and not v.correct
    short = TASK.canonical_response(AdditionProblem("missing", 1, 4, 5), "backward")
    v = TASK.verify(p, short)
    assert v.strategy == "backward" and not v.parseable and not v.correct


def test_step_positions_point_at_the_equals_of_each_step(problems):
    for p in problems[::4]:
        for s in STRATEGIES:
            r = TASK.canonical_response(p, s)
            words = r.split()
            pos = TASK.step_positions(r)
            assert len(pos) == p.length + 1 == len(TASK.verify(p, r).steps_correct)
            assert pos == sorted(pos) and all(words[i] == "=" for i in pos)
            assert len(pos) == words.count("=")
    assert TASK.step_positions("") == [] and TASK.step_positions("hello") == []


# --- problems, twins, ids ---------------------------------------------------------------------


def test_twins_align_word_by_word_and_differ_only_in_type_and_second_operand(problems):
    for p in problems:
        t = TASK.twin(p)
        a, b = p.prompt.split(), t.prompt.split()
        assert len(a) == len(b) == 2 * (p.length + 1) + 4
        second = set(range(len(a) - 1 - (p.length + 1), len(a) - 1))
        differ = {i for i, (x, y) in enumerate(zip(a, b)) if x != y}
        assert 0 in differ and differ <= {0} | second, (p.prompt, t.prompt)
        assert t.type != p.type and t.length == p.length and t.twin() == p
        assert t.chain_id == p.chain_id and t.id != p.id
        if p.type == "sum":
            assert t.given == p.answer and t.answer == p.given


def test_prompts_of_one_length_have_one_word_count_and_parse_back(problems):
    counts = {}
    for p in problems:
        counts.setdefault(p.length, set()).add(len(p.prompt.split()))
        assert parse_prompt(p.prompt) == p
    assert counts == {k: {2 * k + 6} for k in LENGTHS}
    for bad in ["", "sum : 1 , 2 ?", "sum : 0 1 , 0 2", "prod : 0 1 , 0 2 ?", "missing : 0 5 , 0 4 ?",
                "sum : 0 1 ; 0 2 ?"]:
        with pytest.raises(ValueError):
            parse_prompt(bad)


def test_ids_are_distinct_and_stable():
    p = AdditionProblem("sum", 2, 47, 85)
    assert p.id == "add-sum-k2-3ea121ab36" == AdditionProblem("sum", 2, 47, 85).id
    assert p.twin().id == "add-missing-k2-3ea121ab36"
    assert p.stratum == "sum/k2" and TASK.surface_features(p) == {"type x length": "sum|k2"}
    ps = TASK.sample_problems(400, seed=5, lengths=LENGTHS)
    assert len({q.id for q in ps}) == 400
    assert [q.id for q in ps] == [q.id for q in AdditionTask().sample_problems(400, seed=5, lengths=LENGTHS)]
    # ids distinguish every field: the same numbers at another length, or other numbers
    assert AdditionProblem("sum", 3, 47, 85).id != p.id and AdditionProblem("sum", 2, 85, 47).id != p.id


def test_to_dict_from_dict_round_trips_and_rejects_bad_records(problems):
    for p in problems:
        d = json.loads(json.dumps(p.to_dict()))
        assert TASK.problem_from_dict(d) == p
        assert d["id"] == p.id and d["prompt"] == p.prompt and d["stratum"] == p.stratum
    d = problems[0].to_dict()
    with pytest.raises(KeyError):
        TASK.problem_from_dict({k: v for k, v in d.items() if k != "a"})
    for change in [{"type": "product"}, {"length": 0}, {"a": 10 ** d["length"]}, {"b": -1},
                   {"id": "add-sum-k9-0000000000"}]:
        with pytest.raises(ValueError):
            TASK.problem_from_dict({**d, **change})


def test_sample_problems_is_stratified_and_reproducible():
    ps = TASK.sample_problems(203, seed=3, lengths=(1, 2, 3))
    counts = {}
    for p in ps:
        counts[p.stratum] = counts.get(p.stratum, 0) + 1
        assert TASK.surface_features(p) == {"type x length": f"{p.type}|k{p.length}"}
    assert set(counts) == {f"{t}/k{k}" for t in TYPES for k in (1, 2, 3)}
    assert max(counts.values()) - min(counts.values()) <= 1
    assert ps == TASK.sample_problems(203, seed=3, lengths=(1, 2, 3))
    assert ps != TASK.sample_problems(203, seed=4, lengths=(1, 2, 3))
    assert TASK.sample_problems(0, seed=3, lengths=(1,)) == []


def test_an_exhausted_cell_is_a_clear_value_error():
    every = TASK.sample_problems(200, seed=0, lengths=(1,))  # the whole of both length-1 cells
    assert len({p.id for p in every}) == 200
    with pytest.raises(ValueError, match="k1 holds 100 problems"):
        TASK.sample_problems(201, seed=0, lengths=(1,))
    with pytest.raises(ValueError, match="length"):
        TASK.sample_problems(4, seed=0, lengths=(0,))
    with pytest.raises(ValueError, match="lengths"):
        TASK.sample_problems(4, seed=0, lengths=())


# --- vocabulary and prompt slots -------------------------------------------------------------


def test_every_prompt_and_response_word_is_in_the_vocabulary(problems):
    vocab = TASK.vocabulary()
    assert len(vocab) == len(set(vocab))
    words = set()
    for p in problems:
        words.update(p.prompt.split())
        for s in STRATEGIES:
            words.update(TASK.canonical_response(p, s).split())
    assert words <= set(vocab), words - set(vocab)
    assert {"R", "L", "=", ";", "?", "ans", "sum", "missing", *CARRY_WORDS, *BORROW_WORDS} <= set(vocab)


@pytest.mark.parametrize("length", [1, 2, 3, 6])
def test_prompt_slots_name_fixed_roles_in_prompt_order(length):
    assert TASK.prompt_slots == PROMPT_SLOTS
    for t in TYPES:
        p = AdditionProblem(t, length, 10 ** length - 1, 10 ** length - 2)
        words = p.prompt.split()
        idx = [i % len(words) for _, i in PROMPT_SLOTS]
        assert idx == sorted(set(idx)), idx  # distinct, in prompt order
        at = {name: words[i] for name, i in PROMPT_SLOTS}
        assert at["type"] == t and at[":"] == ":" and at["?"] == "?"
        assert at["first operand top digit"] == "0" and at["first operand next digit"] == "9"
        second = p.prompt.split(",")[1].split()[:-1]
        assert [at["second operand tens digit"], at["second operand units digit"]] == second[-2:]


def test_the_steps_position_reads_the_current_tasks_steps():
    """Under use_task, activations' ``steps`` position is the task's own (each ``=`` of its trace),
    and the previous task's comes back after the block."""
    import activations.batch as batch_mod
    from activations.batch import encode_batch
    from activations.positions import resolve_positions
    from probes.tasks import use_task, word_tokenizer

    before = batch_mod._STEP_WORDS
    task = AdditionTask()
    tok = word_tokenizer(task.vocabulary())
    p = task.sample_problems(2, 0, [3])[0]
    trace = task.canonical_response(p, "backward")
    with use_task(task):
        b = encode_batch(tok, [p.prompt], [trace])
        idx = resolve_positions("steps", b)
    got = [tok.convert_ids_to_tokens(int(b.input_ids[0, c])) for c in idx.cols]
    assert got == ["="] * len(task.step_positions(trace)) and len(got) == p.length + 1
    assert batch_mod._STEP_WORDS is before


def test_probe_splits_keep_an_addition_problem_and_its_twin_together():
    """The probes group rows by the task's chain_id (the finite-field id parse does not apply to
    addition ids), so a problem and its twin never straddle a split."""
    import numpy as np

    from probes.probing.report import chain_groups
    from probes.probing.targets import labels_from_rows
    from probes.tasks import use_task

    task = AdditionTask()
    ps = task.sample_problems(6, 1, [2])
    rows = [{"problem": p.to_dict(), "id": p.id} for p in ps] + [{"problem": p.twin().to_dict(), "id": p.twin().id}
                                                                  for p in ps]
    with use_task(task):
        labels = labels_from_rows(rows)
    keys = [r["id"] for r in rows]
    groups = chain_groups(keys, np.array(keys), labels)
    assert len(set(groups)) == 6 and all(groups[i] == groups[i + 6] for i in range(6))
