"""The mediation engine: clean and patched passes, the patch types with their value sources,
batching, cached prefixes, the low-rank head, outcome metrics and attribution estimates.

It imports no analysis, statistic, figure, training, review or stage.
"""

__all__ = ["attribution", "batching", "cache_views", "engine", "lowrank_head", "metrics", "patches", "site_writes"]
