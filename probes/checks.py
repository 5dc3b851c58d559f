"""What ``python -m probes.run`` checks before any stage runs: the pair, the config, the scope.

Each check reads only ``config.json`` and tokenizer files (no weights) and stops a bad run with one
``error:`` line on stderr and exit status 2 (:func:`fail`), as argparse does for a bad flag.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn


def fail(message: str) -> NoReturn:
    """A bad argument: one line on stderr, exit status 2 (as argparse)."""
    print(message, file=sys.stderr)
    sys.exit(2)


def check_task(cfg, explicit_pair: bool = True, grid: bool = False) -> None:
    """The run's task loads and has every required member (:func:`probes.tasks.load_task`), and a
    task other than the default comes with its own checkpoints (the shipped organism and the grid are
    the finite-field task's).

    Raises:
        SystemExit: (status 2) after a one-line ``error:`` naming the task and what is missing.
    """
    from probes.tasks import DEFAULT_TASK, TaskError, load_task

    try:
        load_task(cfg.task)
    except TaskError as e:
        fail(f"error: {e}")
    if cfg.task != DEFAULT_TASK and (grid or not explicit_pair):
        fail(f"error: --task {cfg.task}: the shipped organism{' grid' if grid else ''} is trained on the finite-field "
             "task; give the checkpoints of your task with --pre-rl and --post-rl")


def check_scope(cfg) -> None:
    """What must hold before anything is read: NDIF reachable with a key for ``remote`` (within
    ``activations.load.NDIF_TIMEOUT_S`` seconds; no hanging), and with ``chat`` a chat template
    in both checkpoints' tokenizers.

    Raises:
        SystemExit: (status 2) after a one-line ``error:`` that says what is missing.
    """
    if cfg.remote:
        from activations.load import RemoteUnavailableError, check_remote

        try:
            check_remote()
        except RemoteUnavailableError as e:
            fail(f"error: --remote: {e}")
    if cfg.chat and not cfg.remote:
        from activations.load import load_tokenizer

        for role, src in (("--pre-rl", cfg.pre_rl), ("--post-rl", cfg.post_rl)):
            try:
                has = bool(getattr(load_tokenizer(src), "chat_template", None))
            except (OSError, ValueError):
                continue  # the stages report a checkpoint that cannot be loaded
            if not has:
                fail(f"error: chat: true but the tokenizer of {role} {src} has no chat template: set chat: false "
                       "for checkpoints trained on plain prompts (data.chat: false: the organism), or save the "
                       "template with the checkpoint")


def check_dims(cfg) -> None:
    """Both checkpoints have ``cfg.expect_dims`` (read from ``config.json``; no weights loaded).

    Raises:
        SystemExit: (status 2) after a one-line ``error:`` naming the checkpoint and the dimension.
    """
    if not cfg.expect_dims:
        return
    from activations.dims import ModelDims
    from transformers import AutoConfig

    for role, p in (("--pre-rl", cfg.pre_rl), ("--post-rl", cfg.post_rl)):
        dims = ModelDims.from_config(AutoConfig.from_pretrained(p)).to_dict()
        for key, want in cfg.expect_dims.items():
            if dims[key] != want:
                fail(f"error: {role} {p} has {key} {dims[key]}, the config expects {want} (expect_dims)")


def quick_at_scale(cfg):
    """``--quick`` on checkpoints of ``QUICK_AT_SCALE_PARAMS`` parameters or more: the patching of
    ``probes.runconfig.QUICK_AT_SCALE`` on top (said on stderr), else ``cfg`` unchanged."""
    from probes.runconfig import QUICK_AT_SCALE, QUICK_AT_SCALE_PARAMS, estimate_params

    try:
        n = estimate_params(json.loads((Path(cfg.pre_rl) / "config.json").read_text()))
    except (OSError, ValueError, KeyError):
        return cfg
    if n < QUICK_AT_SCALE_PARAMS:
        return cfg
    patching = {**cfg.patching, **QUICK_AT_SCALE["patching"]}
    print(f"--quick at {n / 1e9:.2f}B parameters: patching trimmed to the verdict's sites "
          f"({', '.join(f'{k}={v}' for k, v in QUICK_AT_SCALE['patching'].items())})", file=sys.stderr)
    return cfg.model_copy(update={"patching": patching})


def check_patching_overrides(cfg) -> None:
    """The config's ``patching`` overrides must be fields of PatchingConfig (checked before any stage runs)."""
    from pydantic import ValidationError

    from probes.patching.config import PatchingConfig

    try:
        PatchingConfig(**{"pre": cfg.pre_rl, "post": cfg.post_rl, "out": "x", **cfg.patching})
    except ValidationError as e:
        first = e.errors()[0]
        fail(f"error: invalid run config field patching.{'.'.join(map(str, first['loc']))}: "
               f"{first['msg'].removeprefix('Value error, ')}")


def check_checkpoints(pre: str, post: str, chat: bool = False, task: str | None = None) -> None:
    """Both are checkpoint directories of one architecture with one tokenizer (read from their
    ``config.json`` and tokenizer files; no weights are loaded), with ``chat`` one chat template,
    and the task's strategy words are one token each (``task``: a ``module:Name`` spec).

    Raises:
        SystemExit: (status 2) after a one-line ``error:`` naming the checkpoint or the first mismatch.
    """
    from activations.load import CheckpointError, check_checkpoint_files
    from activations.pair import ARCHITECTURE_FIELDS, PairMismatchError, _config_value, check_tokenizers
    from probes.tasks import TaskError

    for role, p in (("--pre-rl", pre), ("--post-rl", post)):
        if not (Path(p) / "config.json").exists():
            fail(f"error: {role} {p} is not a checkpoint directory (no config.json); "
                             "train the organism (python -m probes.train grid --config configs/organism/grid.yaml) "
                             "or point at a checkpoint")
        try:
            check_checkpoint_files(p)
        except CheckpointError as e:
            fail(f"error: {role}: {e}")
    from transformers import AutoConfig

    from activations.load import load_tokenizer

    try:
        ca, cb = AutoConfig.from_pretrained(pre), AutoConfig.from_pretrained(post)
        if getattr(ca, "architectures", None) != getattr(cb, "architectures", None):
            raise PairMismatchError("model class", f"{ca.architectures} vs {cb.architectures}", ("pre-RL", "post-RL"))
        for key in ARCHITECTURE_FIELDS:
            va, vb = _config_value(ca, key), _config_value(cb, key)
            if va != vb:
                raise PairMismatchError(f"config.{key}", f"{va!r} vs {vb!r}", ("pre-RL", "post-RL"))
        check_tokenizers(load_tokenizer(pre), load_tokenizer(post), chat=chat)
        if task is not None:
            from probes.tasks import load_task, strategy_ids, unknown_words

            tok, tk = load_tokenizer(pre), load_task(task)
            strategy_ids(tok, tk, chat)
            unknown = unknown_words(tok, tk)
            if unknown:
                raise TaskError(f"the checkpoints' tokenizer does not know {len(unknown)} of the task's words "
                                f"({', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}): they were not "
                                "trained on this task")
    except PairMismatchError as e:
        fail(f"error: {e}")
    except TaskError as e:
        fail(f"error: task {task}: {e}")
    except Exception as e:  # noqa: BLE001 - a tokenizer file transformers cannot parse raises anything
        fail(f"error: cannot read the checkpoints' config or tokenizer ({type(e).__name__}): "
               f"{(str(e).splitlines() or [''])[0]}")

