"""Statistics over result tables: bootstrap and Wilson intervals, the claims table, calibration
and the screen report. Torch-free, so claims jobs run without a model.
"""

__all__ = ["calibration", "claims", "effects", "rates", "screen_report"]
