"""For reviewers: provenance records, the independent reference patcher and verification, and
result bundles. It imports no patching code, so the reference stays independent of the engine.
"""

__all__ = ["bundle", "provenance", "reference", "verify"]
