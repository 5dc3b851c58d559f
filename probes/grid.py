"""``python -m probes.run --grid``: every shipped pre-RL / post-RL pair, and the table across them.

The pairs are discovered, not listed: every checkpoint under the organism root whose card
(``card.json``, written by ``probes.train``) says it is an RL stage (``stage: grpo``) names the
SFT checkpoint it started from (``init``); that SFT checkpoint is its pre-RL model. Each pair
runs the whole pipeline into its own subfolder of the grid folder (``GRID/rl-fb-hard/``...), so
each pair resumes on its own; the grid folder then holds the table across pairs (``grid.json``,
``grid.md``) and a report (``report.md``, ``report.html``) whose first section is that table: the
paper's grid (SFT data x RL data, behavioural decomposition) with the mechanistic columns
(the verdict with its regressions, the patching recoveries and the best strategy probe) next to it.

Example::

    >>> pairs = discover_pairs("checkpoints/organism")          # doctest: +SKIP
    >>> [(p.name, p.pre_rl) for p in pairs]                      # doctest: +SKIP
    [('rl-f-hard', 'checkpoints/organism/sft-f'), ('rl-fb-hard', 'checkpoints/organism/sft-fb')]
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_ROOT = "checkpoints/organism"
RL_STAGES = ("grpo",)
"""Card ``stage`` values that mark an RL checkpoint (``probes.train.config.StageConfig.stage``)."""

GRID_SCHEMA_VERSION = 2


class GridError(ValueError):
    """No pair can be run from the organism root; the message says why."""


@dataclass(frozen=True)
class Pair:
    """One pre-RL / post-RL pair: ``name`` is the post-RL checkpoint's folder name."""

    name: str
    pre_rl: str
    post_rl: str

    @property
    def sft(self) -> str:
        return Path(self.pre_rl).name


def _is_checkpoint(p: Path) -> bool:
    return (p / "config.json").exists()


def _resolve_init(init: str, root: Path) -> Path | None:
    """The card's ``init`` as written (relative to the working directory), else the folder of the
    same name under ``root`` (cards written on another machine or before a move)."""
    for cand in (Path(init), root / Path(init).name):
        if _is_checkpoint(cand):
            return cand
    return None


def discover_pairs(root: str | Path = DEFAULT_ROOT) -> list[Pair]:
    """Every RL checkpoint under ``root`` with its init SFT checkpoint, sorted by name.

    A checkpoint folder counts when it has ``config.json`` and a ``card.json`` whose ``stage``
    is in :data:`RL_STAGES` and whose ``init`` (or ``config.init``) names a checkpoint that
    exists. Cards that cannot be read or name a missing init are skipped with a warning.

    Raises:
        GridError: ``root`` is not a directory, or holds no pair.
    """
    root = Path(root)
    if not root.is_dir():
        raise GridError(f"--grid {root}: not a directory (expected checkpoint folders with card.json)")
    pairs = []
    for card_path in sorted(root.glob("*/card.json")):
        ckpt = card_path.parent
        try:
            card = json.loads(card_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping %s: unreadable card (%s)", ckpt, e)
            continue
        cfg = card.get("config") or {}
        stage = card.get("stage") or cfg.get("stage")
        if stage not in RL_STAGES or not _is_checkpoint(ckpt):
            continue
        init = card.get("init") or cfg.get("init")
        pre = _resolve_init(init, root) if init else None
        if pre is None:
            log.warning("skipping %s: its init checkpoint %r is not there", ckpt, init)
            continue
        pairs.append(Pair(ckpt.name, str(pre), str(ckpt)))
    if not pairs:
        raise GridError(f"--grid {root}: no RL checkpoint with a card naming its SFT init "
                        "(train some: python -m probes.train grid --config configs/organism/grid.yaml)")
    return pairs


def _value_ci(node: dict | None, key: str) -> dict:
    node = node or {}
    return {"value": node.get(key), "ci": node.get(f"{key}_ci")}


def best_probe(probes: dict | None, model: str, target: str = "strategy") -> dict:
    """The best layer of a model's probe for ``target`` (chosen on training rows by the probe
    stage) and its held-out balanced accuracy; ``layer`` None with a ``reason`` when skipped."""
    node = ((probes or {}).get("models") or {}).get(model, {}).get(target)
    if not node:
        return {"layer": None, "balanced_accuracy": None, "ci": None, "reason": "no probe results"}
    if node.get("status") != "ok" or node.get("best_layer") is None:
        return {"layer": None, "balanced_accuracy": None, "ci": None,
                "reason": node.get("reason") or f"probe status {node.get('status')}"}
    layer = node["best_layer"]
    row = next((r for r in node.get("per_layer", []) if r.get("layer") == layer), {})
    m = ((row.get("logistic") or {}).get("test") or {}).get("balanced_accuracy") or {}
    return {"layer": layer, "balanced_accuracy": m.get("value"), "ci": m.get("ci"), "reason": m.get("reason")}


def grid_row(pair: Pair, results: dict) -> dict:
    """One row of the grid from a pair's ``results.json``: behaviour, decomposition (Shapley,
    accuracy units), the verdict with its regressions and its recoveries (the mechanistic term over
    the behavioural one) and the best strategy probe of each model (held-out balanced accuracy)."""
    pooled = results["decomposition"]["pooled"]
    beh = results.get("behaviour") or {}
    v = results["verdict"]

    def acc(role):
        return ((beh.get(role) or {}).get("accuracy") or {}).get("sampled", {}).get("mean")

    def p_forward(role, t):
        share = ((beh.get(role) or {}).get("strategy_share") or {}).get(t, {}).get("first_token") or {}
        return share.get("forward")

    return {
        "pair": pair.name, "pre_rl": pair.pre_rl, "post_rl": pair.post_rl, "sft": pair.sft,
        "behaviour": {
            "accuracy_pre": acc("pre_rl"), "accuracy_post": acc("post_rl"),
            "p_forward": {t: {"pre": p_forward("pre_rl", t), "post": p_forward("post_rl", t)}
                          for t in ("evaluation", "inversion")},
        },
        "decomposition": {k: _value_ci(pooled, k) for k in ("delta", "selection", "improvement", "interaction")},
        "verdict": {
            "label": v["label"],
            "regressions": [r["text"] for r in v.get("regressions") or []],
            "selection_score": {"value": v.get("selection_score"), "ci": v.get("selection_score_ci"),
                                "reason": v.get("selection_score_undefined_reason")},
            "improvement_score": {"value": v.get("improvement_score"), "ci": v.get("improvement_score_ci"),
                                  "reason": v.get("improvement_score_undefined_reason")},
        },
        "strategy_probe": {m: best_probe(results.get("probes"), m) for m in ("pre", "post")},
        "report": f"{pair.name}/report.html",
    }


def _num(x: Any, fmt: str = "+.3f") -> str:
    return "-" if x is None else format(x, fmt)


def _with_ci(node: dict, fmt: str = "+.3f") -> str:
    if node.get("value") is None:
        return "undefined"
    ci = node.get("ci")
    return _num(node["value"], fmt) + (f" [{_num(ci[0], fmt)}, {_num(ci[1], fmt)}]" if ci else "")


def _probe_cell(p: dict) -> str:
    return "-" if p.get("layer") is None else f"L{p['layer']} {_num(p['balanced_accuracy'], '.2f')}"


GRID_COLUMNS = ("pair", "SFT (pre-RL)", "acc pre -> post", "P(F) eval pre -> post", "P(F) inv pre -> post",
                "delta", "selection", "improvement", "verdict", "selection recovery", "improvement recovery",
                "strategy probe pre", "strategy probe post")
"""The grid table's columns: behavioural (accuracy, P(forward) at the first token, the Shapley
decomposition with 95% CIs) then mechanistic (verdict label with any regression, the recoveries with 95% CIs, the
best strategy probe's layer and held-out balanced accuracy)."""


def grid_markdown(rows: list[dict]) -> str:
    """The grid as a markdown pipe table (:data:`GRID_COLUMNS`)."""
    out = ["| " + " | ".join(GRID_COLUMNS) + " |", "|" + " --- |" * len(GRID_COLUMNS)]
    for r in rows:
        b, d, v, sp = r["behaviour"], r["decomposition"], r["verdict"], r["strategy_probe"]
        pf = b["p_forward"]
        cells = [
            r["pair"], r["sft"], f"{_num(b['accuracy_pre'], '.3f')} -> {_num(b['accuracy_post'], '.3f')}",
            f"{_num(pf['evaluation']['pre'], '.2f')} -> {_num(pf['evaluation']['post'], '.2f')}",
            f"{_num(pf['inversion']['pre'], '.2f')} -> {_num(pf['inversion']['post'], '.2f')}",
            _with_ci(d["delta"]), _with_ci(d["selection"]), _with_ci(d["improvement"]),
            f"**{v['label']}**" + "".join(f"; {x}" for x in v.get("regressions") or []),
            _with_ci(v["selection_score"], ".2f"), _with_ci(v["improvement_score"], ".2f"),
            _probe_cell(sp["pre"]), _probe_cell(sp["post"]),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def grid_results(rows: list[dict], root: str | Path) -> dict:
    """``grid.json``: the rows and what produced them."""
    return {"schema_version": GRID_SCHEMA_VERSION, "organism_root": str(root), "columns": list(GRID_COLUMNS),
            "pairs": rows}
