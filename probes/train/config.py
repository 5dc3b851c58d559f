"""Training configuration: one validated object per run, loaded from YAML.

A config names the model shape, the data (problem types, fields, the distribution of chain
lengths k, the strategy mixture) and the optimiser settings of one stage (SFT or GRPO).
Unknown keys and bad values raise ``pydantic.ValidationError`` naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    """Shape of a from-scratch ``Qwen2ForCausalLM`` (grouped-query attention kept)."""

    layers: int = Field(4, ge=1)
    d_model: int = Field(256, ge=8)
    heads: int = Field(8, ge=1)
    kv_heads: int = Field(2, ge=1)
    d_mlp: int = Field(768, ge=8)
    max_positions: int = Field(512, ge=64)
    rope_theta: float = 10000.0

    @model_validator(mode="after")
    def _gqa(self) -> "ModelConfig":
        if self.d_model % self.heads or self.heads % self.kv_heads:
            raise ValueError("d_model must divide by heads and heads by kv_heads")
        return self


class DataConfig(_Strict):
    """Which problems a stage trains on.

    ``steps`` maps chain length k to its relative weight; ``strategies`` maps each strategy to
    its probability of being drawn for a problem (SFT only; ignored by GRPO).
    """

    fields: list[int] = [11, 13]
    types: list[Literal["evaluation", "inversion"]] = ["evaluation", "inversion"]
    steps: dict[int, float] = {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}
    strategies: dict[Literal["forward", "backward"], float] = {"forward": 0.5, "backward": 0.5}
    n: int = Field(100_000, ge=1, description="examples (SFT) or prompts (GRPO)")
    seed: int = 0
    chat: bool = Field(False, description="wrap prompts and responses as chat messages (instruct models)")

    @field_validator("steps", "strategies")
    @classmethod
    def _weights(cls, v: dict) -> dict:
        if not v or any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        return v

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: list[int]) -> list[int]:
        from probes.task.field import check_field

        for p in v:
            check_field(p)
        return v


class OptimConfig(_Strict):
    lr: float = Field(1e-3, gt=0)
    warmup_ratio: float = Field(0.02, ge=0, le=1)
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    batch_size: int = Field(64, ge=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    save_steps: int = Field(200, ge=1)
    keep_every: int | None = Field(None, ge=1, description="also keep a model-only snapshot (fp16 weights, tokenizer, "
                                   "snapshot.json) every N steps in OUT/snapshots/step-N, for python -m "
                                   "probes.trajectory; the Trainer's checkpoints for resuming are unchanged")
    logging_steps: int = Field(20, ge=1)
    seed: int = 0
    threads: int | None = Field(None, description="torch CPU threads (None: torch's default)")
    bf16: bool = Field(False, description="bf16 autocast (mixed precision; fp32 master weights)")


def trainer_kwargs(optim: "OptimConfig", data: "DataConfig", work_dir: str) -> dict:
    """``transformers.TrainingArguments`` fields shared by the SFT and GRPO stages."""
    import torch

    return dict(
        output_dir=work_dir,
        learning_rate=optim.lr,
        lr_scheduler_type=optim.scheduler,
        warmup_steps=optim.warmup_ratio,  # a value < 1 is a ratio of the total steps
        weight_decay=optim.weight_decay,
        num_train_epochs=optim.epochs,
        max_steps=optim.max_steps,
        save_steps=optim.save_steps,
        save_total_limit=2,
        logging_steps=optim.logging_steps,
        seed=optim.seed,
        data_seed=data.seed,
        report_to=[],
        bf16=optim.bf16,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


class GRPOSettings(_Strict):
    """GRPO-specific settings (TRL ``GRPOConfig`` names where they exist)."""

    num_generations: int = Field(8, ge=2)
    prompts_per_step: int = Field(16, ge=1)
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.04, ge=0)
    loss_type: str = "dapo"
    max_completion_length: int = Field(160, ge=8)
    reward: Literal["correct", "answer"] = "correct"
    use_vllm: bool = Field(False, description="generate with vLLM (GPU machines where it is installed)")


class TrainConfig(_Strict):
    """One training stage. ``init`` is a checkpoint directory to start from (None: from scratch)."""

    name: str
    stage: Literal["sft", "grpo"]
    out: str
    init: str | None = None
    control: str | None = Field(None, description="marks a control checkpoint (not RL) and says what it controls for; "
                                "copied into its card, and the behaviour grid measures it against ``init``")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    grpo: GRPOSettings = GRPOSettings()

    @model_validator(mode="after")
    def _init_needed(self) -> "TrainConfig":
        if self.stage == "grpo" and not self.init:
            raise ValueError("a grpo stage needs `init`: the SFT checkpoint it starts from")
        return self


class GridConfig(_Strict):
    """The paper's grid: a list of stage config files, run in order (each resumes)."""

    stages: list[str]


def load_config(path: str | Path) -> TrainConfig | GridConfig:
    """Load a stage or grid config from YAML; relative paths inside resolve from the repo root.

    Raises:
        FileNotFoundError: no such file.
        pydantic.ValidationError: a field is missing or invalid (the message names it).
    """
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level")
    if "stages" in data:
        return GridConfig(**data)
    return TrainConfig(**data)
