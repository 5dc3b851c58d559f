"""The run config of ``python -m probes.run``: one validated object, from flags or YAML.

Unknown keys and bad values raise ``pydantic.ValidationError`` naming the field.
``quick()`` gives the seconds-long smoke settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_PRE = "checkpoints/organism/sft-fb"
DEFAULT_POST = "checkpoints/organism/rl-fb-hard"
DEVICE_MAPS: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")
"""The named device maps of ``from_pretrained`` (``activations.load.DEVICE_MAPS``)."""
DIM_KEYS: tuple[str, ...] = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_mlp", "d_vocab")
"""The keys ``expect_dims`` may name (fields of ``activations.dims.ModelDims``)."""


class RunConfig(BaseModel):
    """Everything one run of the pipeline needs.

    Attributes:
        pre_rl, post_rl: checkpoint directories (or Hub ids) before and after RL.
        out: the run folder (default ``runs/NAME``). name: the run's name.
        n_problems, steps, samples, seed: the run's held-out problems (stratified over field x
            type x steps) and temperature-1 samples per problem. Every stage reads these problems:
            behaviour, cache and probes all of them, patching a stratified subset of
            ``patching.n_problems`` (:data:`PATCHING_PROBLEMS` by default).
        forced_accuracy, forced: how the forced-strategy accuracy ``a(s|x)`` is measured
            (``auto``: exact, the probability of the one correct response, where the tokenizer
            spells each response one way, else sampled; ``exact``; ``sampled``;
            :mod:`probes.behaviour.exact`) and the forced samples per problem and strategy (the
            accuracy when sampled; a check beside the exact one otherwise; 0: none).
        probe_hook, probe_position: what the probes read (``hook_resid_post`` at ``prompt_end``).
        steer_n, steer_generate: the steering dose-response (probes stage).
        probe_targets: the classification / regression targets probed beside the within-type
            propensity map (``probes.probing.targets.TARGETS``; the first must be ``strategy``,
            whose direction is steered).
        patching: overrides of :class:`probes.patching.config.PatchingConfig` fields.
        backend, dtype, device, batch_size: how models run.
        cache_chunk: problems per chunk of the activation store (the unit an interrupted cache
            stage resumes from).
        device_map: shard each model over several devices with accelerate (``"auto"``,
            ``"balanced"``, ``"balanced_low_0"``, ``"sequential"`` or a ``{module: device}``
            mapping), passed to ``from_pretrained``; None: one ``device``.
        remote: run the models on NDIF through nnsight (needs an NDIF API key and the network;
            ``python -m probes.run`` checks both first and stops with a one-line error).
        chat: wrap the task prompt in the checkpoints' chat template (one user turn, then the
            assistant's generation prompt; :func:`activations.batch.render_prompt`), as instruct
            checkpoints trained with ``data.chat: true`` saw it: behaviour, cache, probes
            (steering) and patching all read that input, ``prompt_end`` is the template's last
            token and the response follows it directly. ``python -m probes.run`` checks first
            that both tokenizers have a chat template.
        behaviour_cache: a directory caching each checkpoint's behaviour rows, keyed by its weights,
            the problems and the settings (:func:`probes.behaviour.pipeline.evaluate_cached`), so that
            a checkpoint measured once is read back (``probes.trajectory`` sets it for the start it
            shares across snapshots). Speed only: no stage hash includes it.
        task: the task, ``module:Name`` (:func:`probes.tasks.load_task`; default the finite-field task
            of the shipped organism, :data:`probes.tasks.DEFAULT_TASK`). ``python -m probes.run``
            loads and checks it first (one ``error:`` line naming a missing member).
        expect_dims: the dimensions both checkpoints must have (keys of
            :class:`activations.dims.ModelDims`: ``n_layers``, ``d_model``, ``n_heads``,
            ``n_kv_heads``, ``d_head``, ``d_mlp``, ``d_vocab``); checked from ``config.json``
            before any stage runs. None: no check.
    """

    model_config = ConfigDict(extra="forbid")

    pre_rl: str = DEFAULT_PRE
    post_rl: str = DEFAULT_POST
    name: str = "main"
    out: str | None = None
    n_problems: int = Field(400, ge=8)
    steps: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5, 6])
    samples: int = Field(2, ge=1)
    forced: int = Field(0, ge=0)
    forced_accuracy: Literal["auto", "exact", "sampled"] = "auto"
    seed: int = 0
    probe_hook: str = "hook_resid_post"
    probe_position: str = "prompt_end"
    steer_n: int = Field(128, ge=0)
    steer_generate: bool = True
    probe_targets: list[Literal["strategy", "correct", "type", "propensity"]] = Field(
        default_factory=lambda: ["strategy", "correct"])
    n_boot: int = Field(1000, ge=50)
    patching: dict[str, Any] = Field(default_factory=dict)
    backend: Literal["nnsight", "bridge"] = "nnsight"
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = Field(64, ge=1)
    cache_chunk: int = Field(64, ge=1)
    device_map: str | dict[str, Any] | None = None
    remote: bool = False
    chat: bool = False
    behaviour_cache: str | None = None
    task: str = "probes.task.adapter:FiniteFieldTask"
    expect_dims: dict[str, int] | None = None

    @field_validator("device_map")
    @classmethod
    def _device_map_known(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, dict) and v not in DEVICE_MAPS:
            raise ValueError(f"unknown device map {v!r}: use one of {list(DEVICE_MAPS)} or a mapping {{module: device}}")
        return v

    @field_validator("expect_dims")
    @classmethod
    def _dims_known(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is not None:
            unknown = sorted(set(v) - set(DIM_KEYS))
            if unknown:
                raise ValueError(f"unknown dimension(s) {unknown}: use {list(DIM_KEYS)}")
        return v

    @field_validator("patching")
    @classmethod
    def _patching_reads_the_run(cls, v: dict[str, Any]) -> dict[str, Any]:
        own = sorted(set(v) & {"steps", "fields", "seed"})
        if own:
            raise ValueError(f"patching.{own[0]}: the patching stage reads the run's problems; set the top-level "
                             "steps and seed instead (patching.n_problems picks a stratified subset of them)")
        return v

    @field_validator("probe_targets")
    @classmethod
    def _strategy_first(cls, v: list[str]) -> list[str]:
        if not v or v[0] != "strategy" or len(set(v)) != len(v):
            raise ValueError("probe_targets must start with 'strategy' (its direction is steered) and name each "
                             "target once")
        return v

    @field_validator("steps")
    @classmethod
    def _steps_positive(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 1:
            raise ValueError("steps must be a non-empty list of chain lengths >= 1")
        return v

    @property
    def folder(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.name

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "RunConfig":
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a YAML mapping")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


PATCHING_PROBLEMS = 128
"""Problems of the run that the patching stage patches by default (a stratified subset): the
mechanistic sweeps cost a forward pass per problem, strategy, cell and direction, and 128 keeps the
full ``make run`` within 3 minutes on 2 CPU cores."""

QUICK: dict[str, Any] = dict(
    n_problems=16, steps=[1, 2], samples=1, forced=0, steer_n=8, steer_generate=False, n_boot=100, cache_chunk=4,
    patching=dict(n_problems=8, counterfactual_n=4, counterfactual_steps=2, behaviour_n=2,
                  n_boot=100, max_new_tokens=24),
)
"""``--quick``: a seconds-long smoke run (tiny problem sets, few bootstrap draws)."""

QUICK_AT_SCALE_PARAMS = 100_000_000
"""``--quick`` on checkpoints of at least this many parameters (estimated from ``config.json``)
also applies :data:`QUICK_AT_SCALE`."""
QUICK_AT_SCALE: dict[str, Any] = dict(
    patching=dict(n_problems=2, hooks=["hook_resid_post"], routing_positions=["prompt"],
                  strategies=["forward"], counterfactual_n=0, behaviour_n=0, max_rows=16),
)
"""``--quick`` at real scale (Qwen2.5-1.5B: 1.5B parameters, 28 layers, vocabulary 151,936), where
a patching sweep costs one full forward per layer and cell: patching is trimmed to what the
verdict reads (``hook_resid_post`` at every layer, routing at the prompt, execution of forced
forward traces, 2 of the run's problems, at most 16 rows per forward so that the logits of a
batch stay under 1 GB) without the counterfactual, attribution and generation checks. On two
CPU cores in float32 this is tens of minutes, not hours; the other stages keep :data:`QUICK`."""


def estimate_params(config: dict[str, Any]) -> int:
    """Parameters of a decoder-only transformer from its ``config.json`` fields (embeddings,
    attention with GQA and biases ignored, gated MLP, norms; the unembedding counted when untied).

    Raises:
        KeyError: a missing ``hidden_size``, ``num_hidden_layers`` or ``vocab_size``.
    """
    c = config.get("text_config") or config
    d, n_layers, vocab = int(c["hidden_size"]), int(c["num_hidden_layers"]), int(c["vocab_size"])
    h = int(c.get("num_attention_heads") or 1)
    d_head = int(c.get("head_dim") or d // h)
    kv = int(c.get("num_key_value_heads") or h)
    mlp = int(c.get("intermediate_size") or 4 * d)
    per_layer = 2 * d * h * d_head + 2 * d * kv * d_head + 3 * d * mlp + 2 * d
    emb = vocab * d * (1 if c.get("tie_word_embeddings", False) else 2)
    return n_layers * per_layer + emb + d
