"""Seconds per training batch of the plants' fine-tunes on SmolLM2 (CPU, one thread).

A batch is the loss and its backward pass, as `training.finetune.train` runs them. The rows
are the component specs of the late plants of the calibration grid and of the default run. A bypass plant's loss has two passes, but
below the bypassed band they are one computation, so its batch should cost about what the
plain pass of the same trainable band costs: the last column is that ratio.

    .venv/bin/python bench/finetune_bench.py [--batches N] [--batch-size B]

Needs the workflow's converted base model and the training prompts (after `make replicate`,
or its download_model stage). Prints a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "data" / "models" / "smollm2-135m-instruct" / "hf"
TRAIN_DATA = ROOT / "data" / "prompts" / "safety_train.csv"
SPECS: dict[str, dict] = {  # the plants' `trainable`, and the bypass plant's band trained plainly
    "plant-late-mlp": {"site": "mlp", "layers": [22, 25]},
    "plant-late-attn": {"site": "attn", "layers": [22, 25]},
    "plant-final-gate": {"site": "neuron", "layer": 29, "units": 16},
    "mlp 1-9, plain": {"site": "mlp", "layers": [1, 9]},
    "plant-early-bypass": {"site": "mlp", "layers": [1, 9], "bypass": [20, 29]},
}


def seconds_per_batch(model, tokenizer, spec: dict, n_batches: int, batch_size: int) -> float:
    from harmmed.models.components import parse_trainable
    from harmmed.training.finetune import TrainingPass
    from harmmed.training.plan import resolve_trainable
    from harmmed.training.training_data import balanced_subset, encode_examples, read_training_rows

    plan = resolve_trainable(model, parse_trainable(spec), 0)
    rows = balanced_subset(read_training_rows(TRAIN_DATA), n_batches * batch_size, 0)
    examples = encode_examples(tokenizer, rows)
    for name, param in model.named_parameters():
        param.requires_grad_(name in plan.names)
    forward = TrainingPass(model, plan, examples, batch_size, tokenizer.pad_token_id)  # setup is not timed
    times = []
    for start in range(0, len(examples), batch_size):
        began = time.perf_counter()
        forward.loss(range(start, min(start + batch_size, len(examples)))).backward()
        times.append(time.perf_counter() - began)
        model.zero_grad(set_to_none=True)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6, help="batches timed per spec (median reported)")
    parser.add_argument("--batch-size", type=int, default=8, help="the default plants' batch_size")
    args = parser.parse_args()
    if not (MODEL_DIR / "config.json").is_file():
        sys.exit(f"finetune_bench: no converted model at {MODEL_DIR.relative_to(ROOT)}; run `make replicate` "
                 "(or its download_model stage) first")
    from harmmed.models.loading import load_model

    torch.set_num_threads(1)
    model, tokenizer = load_model(MODEL_DIR, dtype="float32", device="cpu")
    seconds = {}
    for name, spec in SPECS.items():
        print(f"timing {name} ...", file=sys.stderr, flush=True)
        seconds[name] = seconds_per_batch(model, tokenizer, spec, args.batches, args.batch_size)
    print(f"Fine-tune batches on {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
          f"batch size {args.batch_size}, median of {args.batches} batches\n")
    print("| trainable | s / batch | / plain band |")
    print("| --- | --- | --- |")
    for name, value in seconds.items():
        ratio = f"{value / seconds['mlp 1-9, plain']:.2f}" if name == "plant-early-bypass" else ""
        print(f"| {name} | {value:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
