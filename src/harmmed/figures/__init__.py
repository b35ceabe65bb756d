"""Every figure, drawn from result tables only. Torch-free, so a bundle can be redrawn
without a model.
"""

__all__ = ["calibration", "generation", "neuron", "plotting", "probe", "recovery", "screen", "tokens"]
