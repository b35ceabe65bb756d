"""Entry point of ``make figures BUNDLE=...``: ``python workflow/scripts/redraw.py BUNDLE [OUT_DIR]``
(with ``src`` on PYTHONPATH).

Like a rule script it calls one function in :mod:`harmmed.stages` (which imports no torch for
this), so it runs where only pandas and matplotlib are installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harmmed.stages import figures_from_bundle


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: python workflow/scripts/redraw.py BUNDLE.tar.gz [OUT_DIR]", file=sys.stderr)
        return 2
    bundle = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else bundle.parent / bundle.name.removesuffix(".tar.gz")
    try:
        root = figures_from_bundle(bundle, out)
    except ValueError as err:  # harmmed.review.bundle.BundleError: a bad or tampered bundle
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"figures, claims.md and report.html regenerated under {root / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
