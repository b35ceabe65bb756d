"""Files: atomic writes, the one table writer, JSON and manifests, checked downloads, shards.

The lowest floor: it imports nothing of the package but the constants, and no torch.
"""

__all__ = ["fetch", "shards", "storage"]
