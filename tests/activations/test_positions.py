"""Specification of named positions: prompt_end, steps, all and indices, under either padding."""

import pytest

from activations.batch import PositionError, encode_batch
from activations.positions import PositionIndex, parse_positions, resolve_positions
from probes.task.tokenizer import build_tokenizer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_specs_parse_from_names_and_index_lists():
    specs = parse_positions("prompt_end steps all 0,-1")
    assert [s.kind for s in specs] == ["prompt_end", "steps", "all", "index"]
    assert specs[3].indices == (0, -1) and str(specs[3]) == "0,-1"


@pytest.mark.parametrize("bad", ["end", "prompt-end", "1.5", "1,,2"])
def test_an_unknown_spec_is_named_with_the_accepted_ones(bad):
    with pytest.raises(ValueError, match=f"unknown position {bad!r}: use prompt_end, prompt, response, steps, all"):
        parse_positions([bad])


def test_duplicate_specs_are_rejected():
    with pytest.raises(ValueError, match="duplicate position specs"):
        parse_positions(["steps", "steps"])


@pytest.mark.parametrize("side", ["left", "right"])
def test_resolved_coordinates_point_at_the_same_tokens_under_both_paddings(tok, records, side):
    prompts = [r["prompt"] for r in records]
    responses = [r["response"] for r in records]
    b = encode_batch(tok, prompts, responses, padding_side=side)
    idx = resolve_positions(["prompt_end", "steps", "0,-1"], b)
    words = [f"{p} {r}".split() for p, r in zip(prompts, responses)]
    got = [tok.convert_ids_to_tokens(int(b.input_ids[r, c])) for r, c in zip(idx.rows, idx.cols)]
    want = [words[r][p] for r, p in zip(idx.rows.tolist(), idx.positions.tolist())]
    assert got == want
    assert [lab for lab, r in zip(idx.labels, idx.rows.tolist()) if r == 0][:2] == ["prompt_end", "step:0"]
    assert all(tok.convert_ids_to_tokens(int(b.input_ids[r, c])) == "?"
               for r, c, lab in zip(idx.rows, idx.cols, idx.labels) if lab == "prompt_end")
    assert all(tok.convert_ids_to_tokens(int(b.input_ids[r, c])) == "="
               for r, c, lab in zip(idx.rows, idx.cols, idx.labels) if lab.startswith("step:"))


def test_all_covers_every_real_token_and_no_pad(tok, problems):
    b = encode_batch(tok, [p.prompt for p in problems])
    idx = resolve_positions("all", b)
    assert len(idx) == int(b.attention_mask.sum())
    assert bool(b.attention_mask[idx.rows, idx.cols].all())


def test_steps_without_a_response_name_the_record(tok, problems):
    b = encode_batch(tok, [problems[0].prompt], keys=[problems[0].id])
    with pytest.raises(PositionError, match=f"{problems[0].id}: position 'steps' needs a teacher-forced response"):
        resolve_positions("steps", b)


def test_an_index_out_of_range_names_the_record_and_its_length(tok, problems):
    b = encode_batch(tok, [problems[0].prompt], keys=["k0"])
    n = int(b.lengths[0])
    with pytest.raises(PositionError, match=f"k0: token index {n} is out of range for an input of {n} tokens"):
        resolve_positions([str(n)], b)


def test_from_pairs_builds_padded_columns(tok, problems):
    b = encode_batch(tok, [problems[0].prompt, problems[3].prompt], padding_side="left")
    idx = PositionIndex.from_pairs(b, [0, 1], [0, 0])
    assert idx.cols.tolist() == [int(b.pad_offset[0]), int(b.pad_offset[1])]


def test_prompt_words_are_the_same_word_roles_across_lengths_and_paddings(tok, problems):
    from probes.task.problems import MAP_POSITIONS, PROMPT_SLOTS

    specs = parse_positions(MAP_POSITIONS)
    assert specs[0].kind == "words" and str(specs[0]) == MAP_POSITIONS
    prompts = [p.prompt for p in problems[:6]]
    for side in ("left", "right"):
        batch = encode_batch(tok, prompts, padding_side=side)
        idx = resolve_positions(specs, batch)
        n = len(PROMPT_SLOTS)
        assert idx.labels[:n] == [f"word:{i}" for _, i in PROMPT_SLOTS]
        for b, p in enumerate(prompts):
            words = p.split()
            ids = batch.input_ids[idx.rows[b * n:(b + 1) * n], idx.cols[b * n:(b + 1) * n]].tolist()
            assert tok.convert_ids_to_tokens(ids) == [words[i] for _, i in PROMPT_SLOTS]


def test_prompt_words_take_the_last_token_of_a_split_word_inside_a_chat_template():
    from tests.conftest import CHATML, qwen_like_tokenizer, without_merges

    tok = without_merges(qwen_like_tokenizer(), "eval")  # "eval" is spelled byte by byte
    tok.chat_template = CHATML
    prompt = "p11 eval : sub ru ; x = zo ; y = ?"
    batch = encode_batch(tok, [prompt], chat=True)
    idx = resolve_positions(parse_positions("words:1,-1 prompt_end"), batch)
    enc = tok(batch_text := tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                     add_generation_prompt=True), add_special_tokens=False,
              return_offsets_mapping=True)
    spans = enc["offset_mapping"]
    start = batch_text.index(prompt)
    eval_end = start + prompt.index("eval") + len("eval")
    # word 1 is the token that ends "eval" (several tokens spell it); word -1 is "?", not prompt_end
    assert spans[int(idx.positions[0])][1] == eval_end
    assert eval_end - len("eval") < spans[int(idx.positions[0]) - 1][1] < eval_end  # the token before is in it too
    assert batch_text[slice(*spans[int(idx.positions[1])])].strip() == "?"
    assert int(idx.positions[2]) > int(idx.positions[1])  # the template's last token comes after the prompt


def test_a_prompt_word_out_of_range_names_the_record(tok, problems):
    batch = encode_batch(tok, [problems[0].prompt], keys=["k0"])
    with pytest.raises(PositionError, match="k0: prompt word 40 is out of range"):
        resolve_positions(parse_positions("words:40"), batch)


def test_prompt_and_response_groups_are_the_patching_cells_groups(tok, records):
    """activations.positions is the one home of position groups: the patching cells resolve
    ``prompt`` and ``response`` through it, to the same tokens."""
    from activations.positions import GROUPS
    from probes.patching.cells import POSITION_GROUPS, resolve_cell_positions

    assert POSITION_GROUPS == GROUPS
    b = encode_batch(tok, [r["prompt"] for r in records], [r["response"] for r in records], padding_side="left")
    for group in ("prompt", "response"):
        idx = resolve_positions(group, b)
        rows, pos = resolve_cell_positions(group, b)
        assert (idx.rows.tolist(), idx.positions.tolist()) == (rows, pos) and len(rows) > len(records)
    n_prompt = [int(e) + 1 for e in b.prompt_end]
    assert resolve_positions("prompt", b).rows.bincount().tolist() == n_prompt
