"""Time the attribution screen on a Llama-3.1-8B-shaped random model (32 layers x 14,336 units).

    PYTHONPATH=src python bench/screen_gpu.py                 # on a CUDA machine, bfloat16
    PYTHONPATH=src python bench/screen_gpu.py --shape tiny --device cpu --dtype float32

The weights are random (no download): the screen's cost depends on the shapes, not on the
weights, and its rank agreement is measured on the same model against exact patches of a
per-layer sample of units. ``--shape tiny`` runs the same path on a small model, which is how the
test suite checks this script without a GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "src")]

from screen_bench import render_screen, time_screen  # noqa: E402

from harmmed.analyses.pairs import clean_runs  # noqa: E402
from harmmed.datasets.prompts import EncodedPair  # noqa: E402
from harmmed.patching.engine import MediationEngine  # noqa: E402

SHAPES = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=256),
}


def build_model(shape: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised Llama of the given shape, built directly on the device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape])).eval()
    finally:
        torch.set_default_dtype(previous)
    return model


def random_pair(vocab: int, prompt_len: int = 64, span: int = 44, n_target: int = 12) -> EncodedPair:
    """A minimal pair shaped like the real ones: two differing tokens at ``span``."""
    rng = np.random.default_rng(0)
    harmful = rng.integers(10, vocab, prompt_len).tolist()
    benign = list(harmful)
    benign[span:span + 2] = [(t + 1) % vocab for t in harmful[span:span + 2]]
    return EncodedPair("gpu-1", "discovery", "x", harmful, benign, rng.integers(10, vocab, n_target).tolist(),
                       list(range(prompt_len - 5, prompt_len)))


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metric", choices=("harm", "refusal"), default="refusal")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("screen_gpu: no CUDA device here; run with --shape tiny --device cpu --dtype float32 to check the path")
    model = build_model(args.shape, args.device, getattr(torch, args.dtype))
    vocab = model.config.vocab_size
    engine = MediationEngine(model, refusal_ids=[40, 41], memory_budget_mb=40000 if args.device != "cpu" else 512,
                             max_batch_size=512 if args.device != "cpu" else 64)
    pair = random_pair(vocab, prompt_len=64 if args.shape != "tiny" else 24, span=44 if args.shape != "tiny" else 14)
    runs = clean_runs(engine, pair)  # warm-up, untimed
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    import time

    start = time.perf_counter()
    runs = clean_runs(engine, pair)
    clean_s = time.perf_counter() - start
    label = f"{args.shape} random, {args.dtype}, {args.device}"
    timing = time_screen(engine, pair, runs, label, metric=args.metric, repeats=args.repeats, clean_s=clean_s)
    text = render_screen([timing])
    if args.device.startswith("cuda"):
        text += f"\npeak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
