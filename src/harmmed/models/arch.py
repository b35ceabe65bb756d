"""Where each mediator lives inside a Hugging Face causal LM.

Architecture differences are data, not code: one row per ``model_type`` naming the module paths
of the decoder blocks and their sub-blocks, and the config fields that give the sizes. The engine
only ever reads this table, so supporting a new family means adding a row here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ArchSpec:
    """Module paths (relative to the CausalLM) and config field names for one family."""

    layers: str  # the ModuleList of decoder blocks
    attn: str  # attention sub-block, relative to a block; output taken after o_proj
    mlp: str  # MLP sub-block, relative to a block
    down_proj: str  # MLP output projection, relative to a block; its input is the neuron site
    o_proj: str  # attention output projection, relative to a block; its input is the attn_dims site
    final_norm: str  # the norm between the last block and the LM head, relative to the CausalLM
    n_layers: str = "num_hidden_layers"
    d_model: str = "hidden_size"
    d_mlp: str = "intermediate_size"
    text_config: bool = False  # sizes live in config.text_config (multimodal wrappers)


_LLAMA_LIKE = ArchSpec(
    layers="model.layers", attn="self_attn", mlp="mlp", down_proj="mlp.down_proj", o_proj="self_attn.o_proj",
    final_norm="model.norm",
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "gemma3": ArchSpec(
        layers="model.language_model.layers",
        attn="self_attn",
        mlp="mlp",
        down_proj="mlp.down_proj",
        o_proj="self_attn.o_proj",
        final_norm="model.language_model.norm",
        text_config=True,
    ),
    "gpt2": ArchSpec(
        layers="transformer.h",
        attn="attn",
        mlp="mlp",
        down_proj="mlp.c_proj",
        o_proj="attn.c_proj",
        final_norm="transformer.ln_f",
        n_layers="n_layer",
        d_model="n_embd",
        d_mlp="n_inner",
    ),
    "gpt_neox": ArchSpec(
        layers="gpt_neox.layers",
        attn="attention",
        mlp="mlp",
        down_proj="mlp.dense_4h_to_h",
        o_proj="attention.dense",
        final_norm="gpt_neox.final_layer_norm",
    ),
}


# Where each mediator site is read and written, for every family: (the ArchSpec field naming the
# module, or "block" for the decoder block itself; the hook side). The embedding output
# (``residual`` at layer -1) is block 0's input. The engine and generation both hook through this.
SITE_HOOKS: dict[str, tuple[str, str]] = {
    "residual": ("block", "output"),
    "attn": ("attn", "output"),
    "mlp": ("mlp", "output"),
    "neuron": ("down_proj", "input"),
    "attn_dims": ("o_proj", "input"),
}


class UnsupportedArchitectureError(ValueError):
    pass


def spec_for(model_type: str) -> ArchSpec:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r}: supported model_type values are {supported}"
        ) from None


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


@dataclass(frozen=True)
class Sites:
    """Resolved mediator modules of one loaded model."""

    arch: str
    spec: ArchSpec
    blocks: torch.nn.ModuleList
    final_norm: torch.nn.Module
    n_layers: int
    d_model: int
    d_mlp: int

    def block(self, layer: int) -> torch.nn.Module:
        return self.blocks[layer]

    def attn(self, layer: int) -> torch.nn.Module:
        return get_module(self.blocks[layer], self.spec.attn)

    def mlp(self, layer: int) -> torch.nn.Module:
        return get_module(self.blocks[layer], self.spec.mlp)

    def down_proj(self, layer: int) -> torch.nn.Module:
        return get_module(self.blocks[layer], self.spec.down_proj)

    def o_proj(self, layer: int) -> torch.nn.Module:
        return get_module(self.blocks[layer], self.spec.o_proj)

    def hook_point(self, site: str, layer: int) -> tuple[torch.nn.Module, str]:
        """The module whose input or output *is* the mediator ``(site, layer)``, and which side."""
        if site == "residual" and layer == -1:
            return self.blocks[0], "input"
        if site not in SITE_HOOKS:
            raise ValueError(f"unknown site {site!r}: known sites are {', '.join(SITE_HOOKS)}")
        field, side = SITE_HOOKS[site]
        block = self.blocks[layer]
        return (block if field == "block" else get_module(block, getattr(self.spec, field))), side


def resolve_sites(model: torch.nn.Module) -> Sites:
    config = model.config
    spec = spec_for(config.model_type)
    size_config = config.text_config if spec.text_config else config
    blocks = get_module(model, spec.layers)
    d_model = int(getattr(size_config, spec.d_model))
    d_mlp = getattr(size_config, spec.d_mlp, None)
    if d_mlp is None:  # GPT-2 leaves n_inner unset and means 4 * n_embd
        d_mlp = 4 * d_model
    return Sites(
        arch=config.model_type,
        spec=spec,
        blocks=blocks,
        final_norm=get_module(model, spec.final_norm),
        n_layers=int(getattr(size_config, spec.n_layers)),
        d_model=d_model,
        d_mlp=int(d_mlp),
    )
