"""For reviewers: provenance records, the independent reference patcher and verification, result
bundles, the shipped reference run (written and compared with) and the docs' results tables. It imports
no patching code, so the reference patcher stays independent of the engine.
"""

__all__ = ["bundle", "compare", "docs_results", "provenance", "reference", "reference_run", "verify"]
