"""GPU check: the fast engine equals the plain path on CUDA, and how it scales to a 7-9B shape.

Run on a machine with a CUDA GPU from the repository root:
    PYTHONPATH=src:tests python bench/gpu_check.py
The paper-scale part uses a randomly initialised Llama-3.1-8B-shaped model (no download): the
cost of patching depends on the shapes, not on the weights.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("src", "tests")]

from test_engine import TARGET, make_pair, random_interventions  # noqa: E402
from tiny import FAMILIES, tiny_model  # noqa: E402

from harmmed.analyses import mediation  # noqa: E402
from harmmed.analyses.pairs import clean_runs  # noqa: E402
from harmmed.datasets.prompts import EncodedPair  # noqa: E402
from harmmed.patching.engine import MediationEngine  # noqa: E402
from harmmed.patching.patches import Patch  # noqa: E402


def exactness_on_cuda() -> None:
    for family in FAMILIES:
        engine = MediationEngine(tiny_model(family).to("cuda"), refusal_ids=[3, 5, 7])
        harmful_ids, benign_ids = make_pair()
        harmful, benign = engine.run(harmful_ids, TARGET), engine.run(benign_ids, TARGET)
        interventions = random_interventions(engine, 60, seed=3)
        for base, source in ((benign, harmful), (harmful, benign)):
            fast = engine.patch(base, source, interventions)
            plain = engine.patch(base, source, interventions, fast=False)
            print(f"cuda exactness {family:12s} max |fast - plain| = {np.abs(fast - plain).max():.2e}")


def paper_scale_timing(prompt_len: int = 64, span: int = 44, n_target: int = 12) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    engine = MediationEngine(model, refusal_ids=[40, 41], memory_budget_mb=40000, max_batch_size=512)
    rng = np.random.default_rng(0)
    harmful = rng.integers(1000, 100000, prompt_len).tolist()
    benign = list(harmful)
    benign[span:span + 2] = [7, 8]
    pair = EncodedPair("gpu-1", "discovery", "x", harmful, benign, rng.integers(1000, 100000, n_target).tolist(),
                       list(range(prompt_len - 5, prompt_len)))
    runs = clean_runs(engine, pair)
    sweeps = {
        "layer curves (all/post/last, NIE+NDE)": mediation.layer_cells(pair, 32, ["all", "post", "last"]),
        "layer x position heatmap (residual)": mediation.heatmap_cells(pair, 32, ["residual"]),
        "module sweep (attn+mlp, windows 1,5)": mediation.module_cells(pair, 32, ["all"], [1, 5]),
    }
    final = [(mediation.Cell("NIE", "neuron", 31, 1, "all"), (Patch("neuron", 31, tuple(range(prompt_len)), (j,)),))
             for j in range(14336)]
    sweeps["final-layer neurons (14336 singles)"] = final
    print(f"\n8B-shaped llama, bf16, prompt {prompt_len} tokens (span at {span}), target {n_target}")
    print("| sweep | interventions | engine s | plain s (sampled, extrapolated) | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, cells in sweeps.items():
        torch.cuda.synchronize()
        start = time.perf_counter()
        list(mediation.run_cells(engine, pair, cells, runs))
        torch.cuda.synchronize()
        fast_s = time.perf_counter() - start
        sample = [cells[i] for i in rng.choice(len(cells), min(24, len(cells)), replace=False)]
        start = time.perf_counter()
        for kind, base, source in (("NIE", runs[1], runs[0]), ("NDE", runs[0], runs[1])):
            chosen = [iv for cell, iv in sample if cell.kind == kind]
            if chosen:
                engine.patch(base, source, chosen, fast=False)
        torch.cuda.synchronize()
        plain_s = (time.perf_counter() - start) * len(cells) / len(sample)
        print(f"| {name} | {len(cells)} | {fast_s:.2f} | {plain_s:.1f} | {plain_s / fast_s:.0f}x |")
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB; engine stats {engine.stats}")


if __name__ == "__main__":
    print(torch.__version__, torch.cuda.get_device_name())
    exactness_on_cuda()
    paper_scale_timing()
