"""Prompt pairs: reading, encoding under a chat template, splitting, and the public benchmark sets.
"""

__all__ = ["prompts", "public_datasets"]
