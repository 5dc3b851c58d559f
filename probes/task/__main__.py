"""``python -m probes.task``: sample task records, check responses, save the tokenizer.

Commands:
    sample   print JSONL records of correct traces
    check    verify each record's ``response``; last line ``checked=N correct=C parseable=P``
    tokenizer  save the word-level tokenizer to a directory
"""

from __future__ import annotations

import argparse
import json
import sys

from probes.task.field import SUPPORTED_FIELDS
from activations.io import LineError, read_jsonl
from probes.task.problems import TYPES
from probes.task.records import RecordError, problem_of, sample_records
from probes.task.traces import STRATEGIES
from probes.task.verify import verify


def _sample(args: argparse.Namespace) -> int:
    for rec in sample_records(args.field, args.type, args.strategy, args.steps, args.n, args.seed):
        print(json.dumps(rec, sort_keys=True))
    return 0


def _check(args: argparse.Namespace) -> int:
    checked = correct = parseable = bad = 0
    try:
        lines = list(read_jsonl(args.file))
    except FileNotFoundError:
        print(f"error: no such file: {args.file}", file=sys.stderr)
        return 2
    for lineno, rec in lines:
        if isinstance(rec, LineError):
            print(f"{args.file}: {rec}", file=sys.stderr)
            bad += 1
            continue
        try:
            prob = problem_of(rec)
        except RecordError as e:
            print(f"{args.file}: line {lineno}: {e}", file=sys.stderr)
            bad += 1
            continue
        v = verify(prob, rec["response"])
        checked += 1
        correct += v.correct
        parseable += v.parseable
        if args.verbose and not v.correct:
            print(f"line {lineno}: {prob.id}: {v.error}")
    if bad:
        print(f"{bad} line(s) could not be checked", file=sys.stderr)
    print(f"checked={checked} correct={correct} parseable={parseable}")
    return 1 if bad else 0


def _tokenizer(args: argparse.Namespace) -> int:
    from probes.task.tokenizer import save_tokenizer

    tok = save_tokenizer(args.out)
    print(f"saved a {len(tok)}-word tokenizer to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m probes.task", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="print JSONL records of correct traces")
    s.add_argument("--field", type=int, choices=SUPPORTED_FIELDS, required=True)
    s.add_argument("--type", choices=TYPES, required=True)
    s.add_argument("--strategy", choices=STRATEGIES, required=True)
    s.add_argument("--steps", type=int, required=True, help="chain length k (>= 1)")
    s.add_argument("--n", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_sample)
    c = sub.add_parser("check", help="verify each record's response against its problem")
    c.add_argument("file", help="JSONL file of records")
    c.add_argument("-v", "--verbose", action="store_true", help="print each wrong response's first error")
    c.set_defaults(func=_check)
    t = sub.add_parser("tokenizer", help="save the word-level tokenizer")
    t.add_argument("--out", required=True)
    t.set_defaults(func=_tokenizer)
    args = ap.parse_args(argv)
    if getattr(args, "steps", 1) < 1:
        ap.error("--steps must be >= 1")
    if getattr(args, "n", 1) < 0:
        ap.error("--n must be >= 0")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
