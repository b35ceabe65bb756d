"""What every stage module shares: the typing aliases, the logger, running a stage under
Snakemake with its log file, and the context of a stage that runs the model."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import model_spec
from ..datasets.prompts import EncodedPair, read_inputs, select_pairs
from ..io.shards import WHOLE, Shard, shard_offset, take_shard
from ..io.storage import read_manifest

if TYPE_CHECKING:  # model stages import torch lazily, so figure and claims jobs run without it
    from ..patching.engine import MediationEngine

Paths = Mapping[str, Any]  # named file paths, e.g. a Snakemake rule's input or output
ManifestSource = str | Path | Mapping[str, Any]

log = logging.getLogger("harmmed")


# ---------------------------------------------------------------- running under Snakemake
def error_line(err: BaseException) -> str:
    """One line for an error: its type and message (a KeyError's message without the quotes)."""
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return f"{type(err).__name__}: {' '.join(str(message).split())}"


def run_stage(smk, stage) -> None:
    """Run ``stage(smk)`` with logging (and library warnings) sent to the rule's log file. A
    failure prints one line (what went wrong, naming the file, key or row) and exits 1; the
    traceback goes to the log."""
    handler = logging.FileHandler(smk.log[0], mode="w") if smk.log else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        stage(smk)
    except Exception as err:
        log.exception("stage failed")
        where = f" (traceback in {smk.log[0]})" if smk.log else ""
        print(f"error: {error_line(err)}{where}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        root.removeHandler(handler)
        handler.close()


# ---------------------------------------------------------------- model stages
class ModelSettingError(ValueError):
    """A setting that depends on the model does not fit it (a window wider than the model, more
    units than a layer has)."""


def check_model_settings(cfg: Mapping[str, Any], manifest: Mapping[str, Any], sections: Iterable[str],
                         where: str = "the config") -> None:
    """The numeric settings of config ``sections`` that depend on the model, against its
    manifest, before any computation: each problem names its key, the value and the limit."""
    n_layers, d_mlp, name = int(manifest["n_layers"]), int(manifest["d_mlp"]), manifest["name"]
    units = "MLP units of a layer"
    checks: dict[str, list[tuple[str, Any, int | None, str]]] = {  # key, value(s), limit (None: a layer index), what
        "mediation": [("mediation.windows", cfg["mediation"]["windows"], n_layers, "layers")],
        "neuron": [("neuron.extra_layers", cfg["neuron"]["extra_layers"], None, ""),
                   ("neuron.block_size", cfg["neuron"]["block_size"], d_mlp, units)],
        "gating": [("gating.top_k", cfg["gating"]["top_k"], d_mlp, units)],
        "screen": [("screen.per_position_layers", cfg["screen"]["per_position_layers"], None, ""),
                   ("screen.top_k", cfg["screen"]["top_k"], d_mlp, units),
                   ("screen.held_out.k", cfg["screen"]["held_out"]["k"], d_mlp, units),
                   ("screen.held_out.block_size", cfg["screen"]["held_out"]["block_size"], d_mlp, units)],
    }
    problems = []
    for section in sections:
        for key, values, limit, what in checks.get(section, []):
            for value in values if isinstance(values, list) else [values]:
                if limit is None and not -n_layers <= value < n_layers:
                    problems.append(f"{key}: layer {value} is outside {name}'s {n_layers} layers "
                                    f"({-n_layers}..{n_layers - 1}, negative counts from the end)")
                elif limit is not None and value > limit:
                    problems.append(f"{key}: {value} is more than the {limit} {what} of {name}")
    if problems:
        raise ModelSettingError(f"{where} does not fit model {name}: " + "; ".join(problems))


@dataclass
class ModelStage:
    """What a stage that runs the model works with: the checked model's engine and tokenizer,
    its manifest, and the pairs of the stage's config section (its shard's part of them, which
    starts at ``offset`` among the section's ``n_section_pairs``)."""

    engine: MediationEngine
    tokenizer: Any
    manifest: dict[str, Any]
    pairs: list[EncodedPair]
    offset: int = 0
    n_section_pairs: int = 0


def open_engine(cfg: Mapping[str, Any], manifest: Mapping[str, Any], threads: int) -> tuple[MediationEngine, Any]:
    """A mediation engine over the manifest's model (opened the one checked way), and its tokenizer."""
    from ..models.loading import open_model
    from ..patching.engine import EngineSettings, MediationEngine

    spec = model_spec(cfg, manifest["name"])
    model, tokenizer = open_model(manifest, spec["dtype"], spec["device"], threads)
    settings = EngineSettings.from_config(cfg)
    return MediationEngine(model, manifest["refusal_token_ids"], settings.memory_budget_mb,
                           settings.max_batch_size, spec["scored_metrics"]), tokenizer


def section_pairs(cfg: Mapping[str, Any], inputs: str | Path, section: str, cap: str = "max_pairs"
                  ) -> list[EncodedPair]:
    """The pairs of the split that config section ``section`` (dotted, e.g. ``screen.held_out``)
    names, at most its ``cap`` of them."""
    settings: Any = cfg
    for key in section.split("."):
        settings = settings[key]
    return select_pairs(read_inputs(inputs), settings["split"], settings[cap], f"{section}.split")


@contextmanager
def model_stage(cfg: Mapping[str, Any], manifest: ManifestSource, threads: int, inputs: str | Path,
                section: str, cap: str = "max_pairs", shard: Shard = WHOLE, first: int | None = None,
                also_check: tuple[str, ...] = ()) -> Iterator[ModelStage]:
    """Check the settings of ``section`` (and ``also_check``) that depend on the model, open the
    engine (every file checked before the stage computes anything), select
    ``section``'s pairs (only the ``first`` of them when given, then ``shard``'s part), and log
    the pair count and the engine's work when the stage's body is done."""
    manifest = read_manifest(manifest)
    check_model_settings(cfg, manifest, [section.split('.')[0], *also_check])
    engine, tokenizer = open_engine(cfg, manifest, threads)
    chosen = section_pairs(cfg, inputs, section, cap)[:first]
    stage = ModelStage(engine, tokenizer, manifest, take_shard(chosen, shard), shard_offset(len(chosen), shard),
                       len(chosen))
    yield stage
    log.info("%s: %d pairs, engine stats %s", section, len(stage.pairs), engine.stats)
