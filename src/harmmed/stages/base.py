"""What every stage module shares: the typing aliases, the logger, and running a stage under
Snakemake with its log file."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Paths = Mapping[str, Any]  # named file paths, e.g. a Snakemake rule's input or output
ManifestSource = str | Path | Mapping[str, Any]

log = logging.getLogger("harmmed")


# ---------------------------------------------------------------- running under Snakemake
def run_stage(smk, stage) -> None:
    """Run ``stage(smk)`` with logging (and library warnings) sent to the rule's log file."""
    handler = logging.FileHandler(smk.log[0], mode="w") if smk.log else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        stage(smk)
    except Exception:
        log.exception("stage failed")
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
