"""Backends that read and write activations at canonical sites (see :mod:`.base`).

``make_backend(name, checkpoint)`` builds one by name: ``"nnsight"`` (the default) or
``"bridge"`` (the TransformerLens ``TransformerBridge``).
"""

from __future__ import annotations

from activations.backends.base import Backend, Patch, PatchError, RunResult
from activations.load import Checkpoint

BACKENDS: tuple[str, ...] = ("nnsight", "bridge")
DEFAULT_BACKEND = "nnsight"


def make_backend(name: str, checkpoint: Checkpoint) -> Backend:
    """The backend called ``name`` over ``checkpoint``.

    Raises:
        ValueError: an unknown backend name (the message lists the known ones).
    """
    if name == "nnsight":
        from activations.backends.nnsight_backend import NNsightBackend

        return NNsightBackend(checkpoint)
    if name == "bridge":
        from activations.backends.bridge_backend import BridgeBackend

        return BridgeBackend(checkpoint)
    raise ValueError(f"unknown backend {name!r}: use one of {list(BACKENDS)}")


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "Patch", "PatchError", "RunResult", "make_backend"]
