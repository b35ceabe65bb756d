"""Tiny randomly initialised models of every supported family, built from configs in-process."""

from __future__ import annotations

import torch
import transformers

VOCAB = 97

_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
               num_attention_heads=4, max_position_embeddings=128)

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**_COMMON, num_key_value_heads=2),  # GQA + SwiGLU
    "mistral": lambda: transformers.MistralConfig(**_COMMON, num_key_value_heads=2, sliding_window=None),
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON, num_key_value_heads=2),
    "gemma": lambda: transformers.GemmaConfig(**_COMMON, num_key_value_heads=1, head_dim=8),
    "gemma2": lambda: transformers.Gemma2Config(**_COMMON, num_key_value_heads=2, head_dim=8,
                                                 sliding_window=6),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(**_COMMON, num_key_value_heads=2, head_dim=8,
                                                         sliding_window=6, sliding_window_pattern=2),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=128),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**_COMMON, rotary_pct=0.5),
}

FAMILIES = sorted(CONFIGS)


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()
