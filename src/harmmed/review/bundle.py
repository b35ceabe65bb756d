"""Results bundles: one model's tables, provenance and claims in one checksummed archive, from
which a reviewer redraws every figure on a laptop (no model, no torch, no GPU).

``python workflow/scripts/redraw.py BUNDLE [OUT]`` (what ``make figures BUNDLE=...`` runs) checks the
bundle against its ``.sha256`` file, unpacks it and regenerates the figures, ``claims.md`` and an
HTML report. Archives are byte-reproducible: members sorted, owners and times zeroed.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

from ..constants import STAGE_FIGURES
from ..io.fetch import sha256_file

CAPTIONS = Path(__file__).resolve().parents[2] / "workflow" / "report"
CALIBRATION = "calibration.csv"  # the run's cross-model calibration, beside the model's folder
# caption file in workflow/report of the figures whose caption is not named after the figure
SHARED_CAPTIONS = {"heatmap_harm": "heatmap", "heatmap_refusal": "heatmap", "token_heatmap_harm": "token",
                   "token_heatmap_refusal": "token", "probe_accuracy": "probe", "generation_rates": "generation"}


class BundleError(ValueError):
    pass


def pack(provenance_path: Path, out: Path, calibration: Path) -> Path:
    """Write ``out`` (.tar.gz) with every result file the provenance lists, the provenance itself,
    the run's ``calibration.csv`` (so a redrawn claims.md carries the same calibration marks), and
    ``out``.sha256 in ``sha256sum`` format. Fails if a file changed since the provenance."""
    record = json.loads(provenance_path.read_text(encoding="utf-8"))
    results = provenance_path.parent
    model = record["model"]
    names = sorted({*record["results"], provenance_path.name})
    members = [(f"results/{model}/{name}", results / name, record["results"].get(name)) for name in names]
    members.append((f"results/{CALIBRATION}", calibration, None))  # (member, file, digest the provenance holds)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, path, recorded in members:
            data = path.read_bytes()  # read once: the bytes checked are the bytes packed
            if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
                raise BundleError(f"{path} changed after {provenance_path} was written; rerun the workflow")
            info = tarfile.TarInfo(member)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(buffer.getvalue())
    tmp.replace(out)
    Path(f"{out}.sha256").write_text(f"{sha256_file(out)}  {out.name}\n", encoding="utf-8")
    return out


def check(bundle: Path) -> None:
    """The bundle must match the digest in ``<bundle>.sha256``."""
    digest_file = Path(f"{bundle}.sha256")
    if not bundle.is_file():
        raise BundleError(f"{bundle}: no such bundle")
    if not digest_file.is_file():
        raise BundleError(f"{bundle}: its checksum file {digest_file.name} is missing")
    expected = digest_file.read_text(encoding="utf-8").split()[0]
    actual = sha256_file(bundle)
    if actual != expected:
        raise BundleError(f"{bundle}: sha256 {actual} does not match {digest_file.name} ({expected})")


def unpack(bundle: Path, out_dir: Path) -> Path:
    """Check, then extract into ``out_dir`` (only plain files under results/, nothing outside)."""
    check(bundle)
    with tarfile.open(bundle, "r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            parts = Path(member.name).parts
            if not member.isfile() or parts[0] != "results" or ".." in parts or Path(member.name).is_absolute():
                raise BundleError(f"{bundle}: unexpected member {member.name!r}")
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4 / 3.10.12
        tar.extractall(out_dir, members=members, **safe)
    return out_dir


def write_report(figures_dir: Path, model: str, stages: Sequence[str]) -> Path:
    """``report.html`` beside the figures: claims.md, then every figure of ``stages`` (those the
    model ran, keys of STAGE_FIGURES) with its caption."""
    claims = (figures_dir / "claims.md").read_text(encoding="utf-8")
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(model)}</title>",
             f"<h1>Results: {html.escape(model)}</h1><pre>{html.escape(claims)}</pre>"]
    for stem in (stem for stage, stems in STAGE_FIGURES.items() if stage in stages for stem in stems):
        if not (figures_dir / f"{stem}.png").is_file():
            raise BundleError(f"{figures_dir}: figure {stem}.png was not regenerated")
        caption = CAPTIONS / f"{SHARED_CAPTIONS.get(stem, stem)}.rst"
        text = caption.read_text(encoding="utf-8") if caption.is_file() else ""
        parts.append(f"<h2>{stem}</h2><img src='{stem}.png' style='max-width:100%'><p>{html.escape(text)}</p>")
    out = figures_dir / "report.html"
    out.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return out
