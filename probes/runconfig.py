"""The run config of ``python -m probes.run``: one validated object, from flags or YAML.

Unknown keys and bad values raise ``pydantic.ValidationError`` naming the field.
``quick()`` gives the seconds-long smoke settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_PRE = "checkpoints/organism/sft-fb"
DEFAULT_POST = "checkpoints/organism/rl-fb-hard"


class RunConfig(BaseModel):
    """Everything one run of the pipeline needs.

    Attributes:
        pre_rl, post_rl: checkpoint directories (or Hub ids) before and after RL.
        out: the run folder (default ``runs/NAME``). name: the run's name.
        n_problems, steps, samples, forced, seed: the behaviour stage's held-out problems
            (stratified over field x type x steps), temperature-1 samples and forced-strategy
            samples per problem; the cache and probe stages use the same problems.
        probe_hook, probe_position: what the probes read (``hook_resid_post`` at ``prompt_end``).
        steer_n, steer_generate: the steering dose-response (probes stage).
        patching: overrides of :class:`probes.patching.config.PatchingConfig` fields.
        backend, dtype, device, batch_size: how models run.
    """

    model_config = ConfigDict(extra="forbid")

    pre_rl: str = DEFAULT_PRE
    post_rl: str = DEFAULT_POST
    name: str = "main"
    out: str | None = None
    n_problems: int = Field(400, ge=8)
    steps: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5, 6])
    samples: int = Field(4, ge=1)
    forced: int = Field(2, ge=1)
    seed: int = 0
    probe_hook: str = "hook_resid_post"
    probe_position: str = "prompt_end"
    steer_n: int = Field(128, ge=0)
    steer_generate: bool = True
    n_boot: int = Field(1000, ge=50)
    patching: dict[str, Any] = Field(default_factory=dict)
    backend: Literal["nnsight", "bridge"] = "nnsight"
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = Field(64, ge=1)

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


QUICK: dict[str, Any] = dict(
    n_problems=16, steps=[1, 2], samples=1, forced=1, steer_n=8, steer_generate=False, n_boot=100,
    patching=dict(n_problems=4, steps=[2], counterfactual_n=4, counterfactual_steps=2, behaviour_n=2,
                  n_boot=100, max_new_tokens=24),
)
"""``--quick``: a seconds-long smoke run (tiny problem sets, few bootstrap draws)."""
