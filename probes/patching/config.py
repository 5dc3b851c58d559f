"""The configuration of a patching run: one validated object, from flags or YAML.

Unknown keys and bad values raise ``pydantic.ValidationError`` naming the field and the allowed
values. ``python -m probes.patch --help`` lists the flags; ``--config FILE.yaml`` loads any of
the fields below (flags given on the command line override the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from activations.sites import BLOCK_HOOKS

Hook = Literal[BLOCK_HOOKS]  # type: ignore[valid-type]  # the block hooks of activations.sites, the one list


class PatchingConfig(BaseModel):
    """Everything a patching run needs (see :func:`probes.patching.pipeline.run_patching`).

    Attributes (groups):
        pre, post, out: the pre-RL and post-RL checkpoint directories and the output folder.
        n_problems: how many of the given problems are patched (a stratified subset,
            :func:`probes.patching.pipeline.stratified_subset`; None: all of them). In
            ``python -m probes.run`` the problems are the run's held-out problems.
        steps, seed: only when no problems are given (``python -m probes.patch``): ``n_problems``
            are drawn with the behaviour stage's sampler (the task's ``sample_problems``,
            :func:`probes.behaviour.pipeline.held_out_problems`); ``seed`` also seeds the bootstrap.
        hooks: block hooks swept over all layers in the recovery curves.
        routing_positions: prompt positions patched for routing (``prompt``, ``prompt_end``).
        strategies: forced strategies whose traces are patched (the improvement term needs both;
            a strategy left out keeps the recipient's accuracy under every patch).
        score_hook, score_layer: the site of the verdict's scores (default: the last block's output).
        recovery_threshold, min_effect: the verdict rule (:mod:`probes.patching.verdict`; the
            recovery's CI lower bound, and the margin in accuracy units by which a behavioural
            term's CI must exclude 0).
        counterfactual_n, counterfactual_steps, counterfactual_hooks: the within-model pairs (up
            to ``counterfactual_n`` of the patched problems of one chain length,
            ``counterfactual_steps`` or their median) and the hooks of their layer x position
            heatmaps (and of attribution patching).
        attribution_top_k, confirm_min_effect: AtP's top hits and what confirms one.
        behaviour_n, behaviour_positions, max_new_tokens: the behavioural check (0 problems: off).
        tol, n_boot: the recovery's gap tolerance (metric units) and bootstrap replicates.
        backend, dtype, device, max_rows: how models run (rows per forward pass of a sweep).
        chat: render the task prompts in the checkpoints' chat template
            (:func:`activations.batch.render_prompt`), for instruct checkpoints trained on chat
            messages; every position (``prompt_end``, the trace) is then located in that input.
    """

    model_config = ConfigDict(extra="forbid")

    pre: str
    post: str
    out: str
    n_problems: int | None = Field(None, ge=1)
    steps: list[int] = Field(default_factory=lambda: [3])
    seed: int = 0
    hooks: list[Hook] = Field(default_factory=lambda: ["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"])
    routing_positions: list[Literal["prompt", "prompt_end"]] = Field(default_factory=lambda: ["prompt", "prompt_end"])
    strategies: list[Literal["forward", "backward"]] = Field(default_factory=lambda: ["forward", "backward"])
    score_hook: Hook = "hook_resid_post"
    score_layer: int = -1
    recovery_threshold: float = Field(0.5, ge=0)
    min_effect: float = Field(0.02, ge=0)
    counterfactual_n: int = Field(16, ge=0)
    counterfactual_steps: int | None = None
    counterfactual_hooks: list[Hook] = Field(default_factory=lambda: ["hook_resid_pre", "hook_attn_out", "hook_mlp_out"])
    attribution_top_k: int = Field(10, ge=1)
    confirm_min_effect: float = Field(0.05, ge=0)
    behaviour_n: int = Field(16, ge=0)
    behaviour_positions: list[Literal["prompt", "response", "all"]] = Field(default_factory=lambda: ["prompt", "response"])
    max_new_tokens: int | None = Field(None, ge=1)
    tol: float = Field(1e-4, gt=0)
    n_boot: int = Field(1000, ge=10)
    backend: Literal["nnsight", "bridge"] = "nnsight"
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = "float32"
    device: str = "cpu"
    max_rows: int = Field(256, ge=1)
    chat: bool = False

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("steps must be a non-empty list of chain lengths >= 1")
        return v

    @field_validator("hooks", "counterfactual_hooks", "routing_positions", "strategies")
    @classmethod
    def _nonempty(cls, v: list) -> list:
        if not v:
            raise ValueError("must not be empty")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate entries in {v}")
        return v

    @model_validator(mode="after")
    def _score_site(self) -> "PatchingConfig":
        if self.score_hook not in BLOCK_HOOKS:  # pragma: no cover - Literal guards it
            raise ValueError(f"score_hook must be one of {list(BLOCK_HOOKS)}")
        if self.counterfactual_steps is not None and self.counterfactual_steps < 1:
            raise ValueError("counterfactual_steps must be >= 1")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: object) -> "PatchingConfig":
        """Load a YAML file of fields, then apply ``overrides`` (None values are ignored).

        Raises:
            pydantic.ValidationError: an unknown field or a bad value (the message names it).
            OSError: the file cannot be read.
        """
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a patching config is a mapping of fields, got {type(data).__name__}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
