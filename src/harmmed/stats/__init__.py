"""Statistics over result tables: bootstrap and Wilson intervals, the claims table, calibration,
the screen report, the neuron ranking and the run summary. Torch-free, so claims jobs run without a model.
"""

__all__ = ["calibration", "claims", "claims_report", "effects", "ranking", "rates", "screen_report", "summary"]
