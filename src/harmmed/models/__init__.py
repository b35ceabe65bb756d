"""Opening a model the one checked way (weights' digest, device), its architecture table and
hooks, the component specs of fine-tunes, greedy decoding and the judges.

Below the patching engine: nothing here imports it.
"""

__all__ = ["arch", "checks", "components", "decode", "hooks", "judge", "loading"]
