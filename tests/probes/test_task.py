"""Specification of the task: fields, problems, traces, the verifier, the labeller, the CLI."""

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probes.task import (
    STRATEGIES,
    STRATEGY_TOKEN,
    TYPES,
    Problem,
    UnknownFieldError,
    first_token_strategy,
    get_field,
    label,
    make_trace,
    parse_prompt,
    random_problem,
    sample_problems,
    sample_records,
    verify,
)
from probes.task.field import SYMBOL_POOL
from probes.task.problems import INVERSE_OP, apply_op
from probes.task.tokenizer import build_tokenizer

pytestmark = pytest.mark.unit

FIELDS = (11, 13)


@st.composite
def problems(draw, max_steps=8):
    import random

    seed = draw(st.integers(0, 2**32))
    field = draw(st.sampled_from(FIELDS))
    type_ = draw(st.sampled_from(TYPES))
    k = draw(st.integers(1, max_steps))
    return random_problem(random.Random(seed), field, type_, k)


# --- the field and its operations -------------------------------------------------------


def test_symbol_bijection_is_seeded_and_differs_between_fields():
    f11, f13 = get_field(11), get_field(13)
    assert len(set(f11.symbols)) == 11 and len(set(f13.symbols)) == 13
    assert set(f13.symbols) == set(SYMBOL_POOL)
    assert f11.symbols != f13.symbols[:11]
    assert get_field(13, symbol_seed=1).symbols != f13.symbols
    assert get_field(13).symbols == f13.symbols


def test_unknown_field_is_rejected_by_name():
    with pytest.raises(UnknownFieldError, match="17"):
        get_field(17)


@given(st.sampled_from(FIELDS), st.sampled_from(["add", "sub", "mul", "div"]), st.integers(0, 12), st.integers(1, 12))
def test_every_operation_composed_with_its_inverse_is_the_identity(p, op, v, c):
    F = get_field(p)
    v, c = v % p, c % p or 1
    assert apply_op(F, INVERSE_OP[op], c, apply_op(F, op, c, v)) == v
    assert apply_op(F, op, c, apply_op(F, INVERSE_OP[op], c, v)) == v


@given(problems())
def test_inversion_answer_run_forward_gives_the_given_output(prob):
    if prob.type == "inversion":
        x = prob.answer
        assert Problem(prob.field, "evaluation", prob.ops, x).answer == prob.given
    else:
        assert Problem(prob.field, "inversion", prob.ops, prob.answer).answer == prob.given


# --- problems ----------------------------------------------------------------------------


def test_problem_ids_are_stable_and_distinguish_type():
    p = Problem(13, "evaluation", (("add", 3), ("mul", 5)), 4)
    assert p.id == Problem(13, "evaluation", (("add", 3), ("mul", 5)), 4).id
    assert p.id.startswith("p13-eval-k2-")
    assert p.twin().id != p.id and p.twin().chain_id == p.chain_id


def test_sampling_is_reproducible_from_the_seed():
    a = sample_problems(50, seed=3, steps=(1, 2, 3))
    assert a == sample_problems(50, seed=3, steps=(1, 2, 3))
    assert a != sample_problems(50, seed=4, steps=(1, 2, 3))
    assert sample_records(13, "inversion", "forward", 4, 7, 0) == sample_records(13, "inversion", "forward", 4, 7, 0)


@given(problems())
def test_twins_differ_in_exactly_three_prompt_words_at_the_same_positions(prob):
    a, b = prob.prompt.split(), prob.twin().prompt.split()
    assert len(a) == len(b)
    assert sum(x != y for x, y in zip(a, b)) == 3


@given(problems())
def test_prompt_parses_back_to_the_problem(prob):
    assert parse_prompt(prob.prompt) == prob


# --- traces, verifier and labeller ------------------------------------------------------


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("type_", TYPES)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("k", range(1, 9))
def test_sampled_records_check_correct_parseable_and_labelled(field, type_, strategy, k):
    recs = sample_records(field, type_, strategy, k, n=25, seed=k)
    for r in recs:
        prob = Problem.from_dict(r)
        v = verify(prob, r["response"])
        assert v.parseable and v.correct, (r, v)
        assert v.answer == r["answer"]
        assert label(r["response"]) == strategy == r["strategy"]
        assert len(v.steps_correct) == k + (2 if strategy != {"evaluation": "forward", "inversion": "backward"}[type_] else 0)


@given(problems(), st.sampled_from(STRATEGIES), st.data())
@settings(max_examples=300)
def test_every_single_value_corruption_is_caught(prob, strategy, data):
    words = make_trace(prob, strategy).split()
    numeral_positions = [i for i, w in enumerate(words) if w in SYMBOL_POOL]
    i = data.draw(st.sampled_from(numeral_positions))
    other = data.draw(st.sampled_from([s for s in SYMBOL_POOL if s != words[i]]))
    words[i] = other
    v = verify(prob, " ".join(words))
    assert not v.correct, (prob.prompt, " ".join(words))


@given(problems(), st.sampled_from(STRATEGIES))
def test_the_first_response_token_alone_determines_the_strategy(prob, strategy):
    trace = make_trace(prob, strategy)
    first = trace.split()[0]
    assert first == STRATEGY_TOKEN[strategy]
    assert first_token_strategy(first) == strategy
    # the same first word for both problem types: the token, not the format, carries it
    assert make_trace(prob.twin(), strategy).split()[0] == first


@given(problems(), st.sampled_from(STRATEGIES))
def test_a_strategy_valid_trace_for_the_twin_does_not_verify_here(prob, strategy):
    # the twin's answer is the given value of this problem, not this problem's answer
    # unless the chain maps it to itself; the verifier must check the problem, not the format
    v = verify(prob, make_trace(prob.twin(), strategy))
    assert not v.correct


@pytest.mark.parametrize(
    "text",
    ["", "hello world", "F", "F x = zo", "F x = zo ; add ke = ru", "B y = zo ; ans", "Q x = zo ; ans zo",
     "F x = zo ; frob ke = ru ; ans ru", "F x = 7 ; add ke = ru ; ans ru"],
)
def test_labeller_calls_malformed_text_unparseable(text):
    assert label(text) == "unparseable"
    assert not any([verify(Problem(11, "evaluation", (("add", 1),), 0), text).parseable])


def test_truncated_trace_is_unparseable_and_extra_steps_fail():
    prob = Problem(13, "inversion", (("add", 3), ("mul", 5), ("sub", 2)), 4)
    t = make_trace(prob, "backward")
    assert label(t.rsplit(";", 1)[0]) == "unparseable"
    words = t.split(" ; ")
    longer = " ; ".join(words[:2] + words[1:])
    assert not verify(prob, longer).correct


# --- the tokenizer ----------------------------------------------------------------------


_TOK = build_tokenizer()


@given(problems(max_steps=12), st.sampled_from(STRATEGIES))
@settings(max_examples=200)
def test_tokenizer_round_trips_every_prompt_and_response_exactly(prob, strategy):
    for text in (prob.prompt, make_trace(prob, strategy)):
        ids = _TOK(text, add_special_tokens=False)["input_ids"]
        assert _TOK.unk_token_id not in ids
        assert len(ids) == len(text.split())
        assert _TOK.decode(ids) == text


def test_tokenizer_saves_and_reloads_as_a_hugging_face_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from probes.task.tokenizer import save_tokenizer

    save_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    text = make_trace(Problem(11, "evaluation", (("mul", 3),), 2), "backward")
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.eos_token == "<eos>" and tok.pad_token == "<pad>"


# --- the CLI ----------------------------------------------------------------------------


def _cli(*args, input=None):
    return subprocess.run([sys.executable, "-m", "probes.task", *args], capture_output=True, text=True, input=input)


def test_cli_sample_prints_records_that_check_clean(tmp_path):
    out = _cli("sample", "--field", "11", "--type", "inversion", "--strategy", "backward", "--steps", "3", "--n", "5", "--seed", "0")
    assert out.returncode == 0, out.stderr
    recs = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(recs) == 5
    for r in recs:
        assert {"id", "field", "type", "steps", "prompt", "response", "answer", "strategy"} <= set(r)
        assert r["field"] == 11 and r["steps"] == 3 and r["strategy"] == "backward"
    f = tmp_path / "s.jsonl"
    f.write_text(out.stdout)
    chk = _cli("check", str(f))
    assert chk.returncode == 0
    assert chk.stdout.strip().splitlines()[-1] == "checked=5 correct=5 parseable=5"


def test_cli_check_reports_bad_lines_by_number_and_checks_the_rest(tmp_path):
    good = sample_records(13, "evaluation", "forward", 2, 3, 0)
    wrong = dict(good[1])
    wrong["response"] = wrong["response"].replace("ans " + wrong["answer"], "ans " + next(s for s in get_field(13).symbols if s != wrong["answer"]))
    missing = {k: v for k, v in good[2].items() if k not in ("ops", "prompt")}
    bad_field = dict(good[0], field=17)
    del bad_field["prompt"]
    lines = [json.dumps(good[0]), "{not json", json.dumps(missing), json.dumps(wrong), json.dumps(bad_field),
             json.dumps([1, 2]), json.dumps(good[2])]
    f = tmp_path / "m.jsonl"
    f.write_text("\n".join(lines) + "\n")
    out = _cli("check", str(f))
    assert out.returncode != 0
    err = out.stderr
    assert "line 2: not valid JSON" in err
    assert "line 3: missing field(s) 'ops'" in err
    assert "line 5: unknown field size 17" in err
    assert "line 6: expected a JSON object" in err
    assert out.stdout.strip().splitlines()[-1] == "checked=3 correct=2 parseable=3"


def test_cli_check_missing_file_fails_cleanly(tmp_path):
    out = _cli("check", str(tmp_path / "nope.jsonl"))
    assert out.returncode == 2 and "no such file" in out.stderr


def test_cli_sample_rejects_an_unknown_field():
    out = _cli("sample", "--field", "17", "--type", "inversion", "--strategy", "backward", "--steps", "3")
    assert out.returncode == 2 and "17" in out.stderr


@given(problems(), st.sampled_from(STRATEGIES))
def test_step_positions_point_at_the_equals_of_every_checked_step(prob, strategy):
    from probes.task.traces import step_positions, word_char_offsets

    t = make_trace(prob, strategy)
    words = t.split()
    pos = step_positions(t)
    assert all(words[i] == "=" for i in pos)
    assert len(pos) == len(verify(prob, t).steps_correct)
    offs = word_char_offsets(t)
    assert [t[a:b] for a, b in offs] == words
