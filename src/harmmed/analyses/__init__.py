"""The mediation analyses the stages run: pairs and position sets, selection on discovery,
the one row builder and sweep loop, and each analysis (layer, module, neuron, claims, tokens,
probe, screen, recovery, generation).

It imports no figure, training or stage.
"""

__all__ = [
    "claim_patches",
    "generation",
    "mediation",
    "neuron",
    "pairs",
    "probe",
    "recovery",
    "rows",
    "screen",
    "selection",
    "sweep",
    "token_roles",
]
