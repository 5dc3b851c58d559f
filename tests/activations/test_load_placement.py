"""Specification of loading beyond one device: ``device_map`` passes through to
``from_pretrained``, and ``remote`` (NDIF) fails at once, in one line, when it cannot run."""

import time

import pytest
import torch

from activations.load import (
    NDIF_TIMEOUT_S,
    CheckpointError,
    RemoteUnavailableError,
    _unreachable,
    check_remote,
    load_checkpoint,
    load_options,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def from_pretrained_kwargs(monkeypatch):
    """The keyword arguments of every ``AutoModelForCausalLM.from_pretrained`` call."""
    import transformers

    calls = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    return calls


@pytest.fixture
def no_ndif_key(monkeypatch):
    import nnsight

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)


def test_device_map_is_passed_to_from_pretrained_and_the_model_is_not_moved(tiny_dir, from_pretrained_kwargs, ckpt):
    sharded = load_checkpoint(tiny_dir, device_map="auto", attn_implementation="eager")
    assert from_pretrained_kwargs[-1]["device_map"] == "auto"
    assert sharded.load_kwargs["device_map"] == "auto" and sharded.device == torch.device("cpu")
    w = sharded.model.model.layers[1].mlp.down_proj.weight
    assert torch.equal(w, ckpt.model.model.layers[1].mlp.down_proj.weight)


def test_without_a_device_map_none_is_passed(tiny_dir, from_pretrained_kwargs):
    load_checkpoint(tiny_dir)
    assert "device_map" not in from_pretrained_kwargs[-1]


def test_load_options_set_defaults_that_an_explicit_argument_overrides(tiny_dir, from_pretrained_kwargs):
    with load_options(device_map="sequential", dtype="bfloat16"):
        a = load_checkpoint(tiny_dir)
        b = load_checkpoint(tiny_dir, dtype="float32")
    c = load_checkpoint(tiny_dir)
    assert [k.get("device_map") for k in from_pretrained_kwargs] == ["sequential", "sequential", None]
    assert (a.dtype, b.dtype, c.dtype) == (torch.bfloat16, torch.float32, torch.float32)


def test_an_unknown_device_map_is_a_named_error(tiny_dir):
    with pytest.raises(ValueError, match="unknown device_map 'everywhere'"):
        load_checkpoint(tiny_dir, device_map="everywhere")
    with pytest.raises(ValueError, match="unknown device_map"):
        with load_options(device_map="everywhere"):
            pass


def test_remote_without_an_api_key_fails_at_once_and_says_so(no_ndif_key, tmp_path):
    t = time.perf_counter()
    with pytest.raises(RemoteUnavailableError, match="needs an API key and none is set: export NDIF_API_KEY") as e:
        load_checkpoint(tmp_path / "not-even-read", remote=True)
    assert time.perf_counter() - t < 1.0 and "\n" not in str(e.value)


def test_remote_with_a_key_but_no_service_names_the_url_and_the_reason(monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    monkeypatch.setenv("NDIF_HOST", "http://127.0.0.1:9")  # nothing listens on the discard port
    t = time.perf_counter()
    with pytest.raises(RemoteUnavailableError, match=r"the service at http://127.0.0.1:9 cannot be reached \(") as e:
        check_remote()
    assert time.perf_counter() - t < NDIF_TIMEOUT_S + 1 and "--device-map auto" in str(e.value)


def test_the_connectivity_check_never_waits_longer_than_its_timeout():
    t = time.perf_counter()
    why = _unreachable("https://10.255.255.1:81", timeout=0.5)  # unroutable: refused, unreachable or silent
    assert why is not None and time.perf_counter() - t < 1.5


def test_load_options_remote_reaches_every_load(no_ndif_key, tiny_dir):
    with load_options(remote=True):
        with pytest.raises(RemoteUnavailableError):
            load_checkpoint(tiny_dir)
    assert isinstance(RemoteUnavailableError("x"), CheckpointError)
