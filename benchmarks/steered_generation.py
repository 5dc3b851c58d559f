"""Benchmark: steered greedy generation through the backend, against a raw PyTorch hook with
Hugging Face's KV-cached ``generate`` (how steering worked before issue 20).

Data: the shipped organism's SFT checkpoint (``checkpoints/organism/sft-fb``), ``N`` held-out prompts
of the finite-field task (lengths 1-4, each repeated 3 times as the steering doses are), a random
vector per prompt added at the prompt end of ``blocks.2.hook_resid_post``, 60 new tokens, batches
of 256 (the probe stage's steering batch).

- **hook**: a forward hook on decoder layer 2 that adds the vector at the last prompt column of
  the prefill, then ``model.generate`` with its KV cache (the baseline);
- **backend, cached**: :func:`probes.probing.steering.steered_generate`, the vector added by a
  backend patch in a KV-cached prefill (``generate_greedy(prompt_only=True)``);
- **backend, rerun**: the same patches with every step re-run over the whole sequence
  (``prompt_only=False``, how held response patches must run).

Prints each time, whether the texts equal the baseline's, and last
``steer_cached_over_hook=X.XX steer_rerun_over_hook=Y.YY`` (time ratios; 1 = as fast as the hook).

Run: ``python benchmarks/steered_generation.py [N]`` (default 100 prompts x 3).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def hook_generate(model, tok, prompts, layer, vectors, max_new_tokens, batch_size) -> list[str]:
    """The baseline: a forward hook adds the vector at the prefill's last prompt column."""
    from activations.batch import cut_at_stop, encode_batch, stop_token_ids

    stops = stop_token_ids(tok)
    out = []
    for s in range(0, len(prompts), batch_size):
        b = encode_batch(tok, prompts[s:s + batch_size], padding_side="left")
        v, end = vectors[s:s + batch_size], b.input_ids.shape[1] - 1

        def fwd(module, args, output, v=v, end=end):
            h = output[0] if isinstance(output, tuple) else output
            if h.shape[1] <= end:  # cached steps: the prompt's keys and values carry the vector
                return output
            h = h.clone()
            h[:, end] += v
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

        handle = model.model.layers[layer].register_forward_hook(fwd)
        try:
            with torch.no_grad():
                gen = model.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, do_sample=False,
                                     max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=stops)
        finally:
            handle.remove()
        out += [tok.decode(cut_at_stop(g, stops), skip_special_tokens=True).strip()
                for g in gen[:, b.input_ids.shape[1]:].tolist()]
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 100
    from activations.backends import make_backend
    from activations.generation import generate_greedy
    from activations.load import load_checkpoint
    from probes.probing.steering import prompt_end_patch, steered_generate
    from probes.tasks import load_task

    torch.manual_seed(0)
    ckpt = load_checkpoint(str(REPO / "checkpoints" / "organism" / "sft-fb"))
    backend = make_backend("nnsight", ckpt)
    prompts = [p.prompt for p in load_task().sample_problems(n, 0, (1, 2, 3, 4))] * 3
    vectors = torch.as_tensor(np.random.default_rng(0).normal(size=(len(prompts), backend.dims.d_model)),
                              dtype=torch.float32)
    layer, site, new, bs = 2, "blocks.2.hook_resid_post", 60, 256

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    t_hook, base = timed(lambda: hook_generate(ckpt.model, ckpt.tokenizer, prompts, layer, vectors, new, bs))
    t_cached, cached = timed(lambda: steered_generate(backend, prompts, site, vectors, new, bs))
    t_rerun, rerun = timed(lambda: generate_greedy(
        backend, ckpt.tokenizer, prompts,
        lambda batch, s: [prompt_end_patch(backend, batch, site, vectors[s:s + len(batch)])],
        max_new_tokens=new, batch_size=bs))
    for name, t, texts in (("hook + KV cache (baseline)", t_hook, base), ("backend, cached prefill", t_cached, cached),
                           ("backend, rerun every step", t_rerun, rerun)):
        same = sum(a == b for a, b in zip(texts, base))
        print(f"{name:<28} {t:7.2f} s   texts equal to the baseline: {same}/{len(base)}")
    print(f"steer_cached_over_hook={t_cached / t_hook:.2f} steer_rerun_over_hook={t_rerun / t_hook:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
