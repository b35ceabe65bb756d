"""Does the analysis find what was planted? Recovery statistics of the models with a known mechanism.

A plant's ground truth is its trainable components (``planted`` in its manifest). On held-out
pairs, in units of the pair's total effect (TE) on the refusal metric:

* type contrast: NIE of the planted band's mlp outputs, jointly at all positions, and of its attn
  outputs; the planted type should carry the effect and the other should not;
* necessity: the share of the TE removed when the planted components are held at their benign
  values in the harmful run, against the other type on the same band and the same type on an
  equally sized band elsewhere; for a bypass plant, also the share removed by holding the band it
  was trained around (attention and MLP outputs), which should be small;
* localisation: among all windows of the band's size, the one whose outputs at the
  post-instruction positions carry the largest NIE should lie in the band. All-position windows
  cannot localise: the layer-0 MLP acts as an extended embedding and carries nearly the whole
  effect at all positions in every model;
* the gate: recall at K of the neuron ranking (chosen on the discovery split) against the K
  planted units (at K = the number planted, precision is the same number), the planted units'
  joint NIE and necessity, and the joint NIE of the planted units the ranking missed: a recall
  below 1 costs nothing when the missed units carry none of the effect. Weighted by effect: the
  found units' share of the planted units' joint NIE, and the precision of the smallest
  top-ranked set (K, 2K, 4K, ..., every ranked unit) whose joint NIE reaches 80% of the
  planted units'.

Ratios are ratios of means over pairs (mean effect / mean TE) with a paired bootstrap CI. A model
without a plant (the base, the aligned fine-tune) gets the same statistics for every configured
plant, with no target: what "no plant" looks like.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..constants import METRICS
from ..datasets.prompts import EncodedPair
from ..models.components import ComponentSpec, parse_trainable, seeded_units
from ..patching.patches import Patch, Run
from ..stats.effects import Bootstrap, paired_statistic
from .pairs import position_sets

if TYPE_CHECKING:
    from ..patching.engine import MediationEngine

METRIC = "refusal"
TYPE_SITES = ("mlp", "attn")


@dataclass(frozen=True)
class Plant:
    """A ground truth to test against: the plant's name, its spec and (neuron plants) its units."""

    name: str
    spec: ComponentSpec
    units: tuple[int, ...] = ()

    @property
    def band(self) -> tuple[int, ...]:
        return tuple(range(self.spec.layers[0], self.spec.layers[1] + 1))


@dataclass(frozen=True)
class Targets:
    type_planted: float = 0.8  # planted type's joint NIE / TE: at least
    type_other: float = 0.4  # other type's: at most
    necessity: float = 0.5  # share of the TE removed by holding the plant at benign values: at least
    gate_recall: float = 0.75  # recall at K of the ranking against the planted units: at least
    gate_joint: float = 0.5  # planted units' joint NIE / TE: at least
    bypass_necessity: float = 0.3  # a bypass plant's bypassed band, held at benign values: at most


def elsewhere_band(band: Sequence[int], n_layers: int) -> tuple[int, ...]:
    """An equally sized band that does not overlap ``band``: the middle of the model, or, when
    that overlaps, the first layers after layer 0, the last layers or the first, whichever is free."""
    size = len(band)
    candidates = [n_layers // 2 - size // 2, 1, n_layers - size, 0]
    for start in candidates:
        layers = tuple(range(start, start + size))
        if not set(layers) & set(band) and 0 <= start and start + size <= n_layers:
            return layers
    raise ValueError(f"no band of {size} layers outside {list(band)} in a {n_layers}-layer model")


def gate_ladder(k: int, n_ranked: int) -> list[int]:
    """Top-ranked set sizes tried for the gate's precision: K, 2K, 4K, ... and every ranked unit."""
    sizes = []
    while k < n_ranked:
        sizes.append(k)
        k *= 2
    return [*sizes, n_ranked] if n_ranked else sizes


def _joint(site: str, layers: Sequence[int], positions: tuple[int, ...], units: tuple[int, ...] | None = None
           ) -> tuple[Patch, ...]:
    return tuple(Patch(site, layer, positions, units) for layer in layers)


def _windows(size: int, n_layers: int) -> list[tuple[int, ...]]:
    return [tuple(range(start, start + size)) for start in range(n_layers - size + 1)]


def pair_effects(engine: MediationEngine, pair: EncodedPair, runs: tuple[Run, Run], plants: Sequence[Plant],
                 rankings: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """One pair's TE and every intervention's refusal effect, keyed by label: ``nie:`` effects
    patch harmful values into the benign run, ``removed:`` effects the share of the harmful
    run's outcome lost when benign values are patched in."""
    harmful, benign = runs
    m = METRICS.index(METRIC)
    sets = position_sets(pair)
    every, post = sets["all"], sets["post"]
    n_layers = engine.sites.n_layers
    nie: dict[str, tuple[Patch, ...]] = {}
    nde: dict[str, tuple[Patch, ...]] = {}
    for plant in plants:
        if plant.spec.site == "neuron":
            nie[f"{plant.name}/units"] = _joint("neuron", plant.band, every, plant.units)
            nde[f"{plant.name}/units"] = nie[f"{plant.name}/units"]
            order = list(rankings.get(plant.name, ()))
            ranked = tuple(sorted(order[: len(plant.units)]))
            if ranked:
                nie[f"{plant.name}/ranked"] = _joint("neuron", plant.band, every, ranked)
                missed = tuple(u for u in plant.units if u not in ranked)
                found = tuple(u for u in plant.units if u in ranked)
                if missed:  # what the ranking left out of the planted gate, and what it found of it
                    nie[f"{plant.name}/missed"] = _joint("neuron", plant.band, every, missed)
                if missed and found:
                    nie[f"{plant.name}/found"] = _joint("neuron", plant.band, every, found)
                for k in gate_ladder(len(plant.units), len(order))[1:]:  # larger top-ranked sets
                    nie[f"{plant.name}/top/{k}"] = _joint("neuron", plant.band, every, tuple(sorted(order[:k])))
            continue
        other = "attn" if plant.spec.site == "mlp" else "mlp"
        for site in TYPE_SITES:
            nie[f"{plant.name}/type_{site}"] = _joint(site, plant.band, every)
        nde[f"{plant.name}/planted"] = _joint(plant.spec.site, plant.band, every)
        nde[f"{plant.name}/other_type"] = _joint(other, plant.band, every)
        nde[f"{plant.name}/elsewhere"] = _joint(plant.spec.site, elsewhere_band(plant.band, n_layers), every)
        if plant.spec.bypass is not None:
            bypassed = range(plant.spec.bypass[0], plant.spec.bypass[1] + 1)
            nde[f"{plant.name}/bypassed"] = _joint("attn", bypassed, every) + _joint("mlp", bypassed, every)
        for window in _windows(len(plant.band), n_layers):
            nie[f"{plant.name}/window/{plant.spec.site}/{window[0]}"] = _joint(plant.spec.site, window, post)
    out = {"te": harmful.y[METRIC] - benign.y[METRIC]}
    if nie:
        ys = engine.patch(benign, harmful, list(nie.values()), scored=(METRIC,))
        out.update({f"nie:{k}": float(y[m]) - benign.y[METRIC] for k, y in zip(nie, ys)})
    if nde:
        ys = engine.patch(harmful, benign, list(nde.values()), scored=(METRIC,))
        out.update({f"removed:{k}": harmful.y[METRIC] - float(y[m]) for k, y in zip(nde, ys)})
    return out


class _Table:
    """Collects recovery rows; ratio statistics get a paired bootstrap CI."""

    def __init__(self, model: str, effects: pd.DataFrame, min_abs_te: float, boot: Bootstrap) -> None:
        self.model, self.rows, self.boot = model, [], boot
        self.effects = effects[effects["te"].abs() >= min_abs_te]

    def ratio(self, plant: str, statistic: str, column: str, target: str = "", check=None,
              denominator: str = "te") -> float:
        frame = self.effects
        if len(frame) < 2:
            value = low = high = float("nan")
        else:
            matrix = frame[[column, denominator]].to_numpy(dtype=float)
            value, low, high = paired_statistic(matrix, lambda m: m[..., 0] / m[..., 1], **self.boot.kwargs())
        self.add(plant, statistic, value, low, high, target, None if check is None else check(value))
        return value

    def add(self, plant: str, statistic: str, value: float, low: float = float("nan"), high: float = float("nan"),
            target: str = "", passed: bool | None = None) -> None:
        self.rows.append({"model": self.model, "plant": plant, "statistic": statistic, "value": value,
                          "ci_low": low, "ci_high": high, "target": target,
                          "pass": "" if passed is None else bool(passed), "n_pairs": len(self.effects)})


def recovery_rows(model: str, effects: pd.DataFrame, plants: Sequence[Plant], own: str | None,
                  rankings: Mapping[str, Sequence[int]], n_layers: int, targets: Targets, min_abs_te: float,
                  boot: Bootstrap) -> list[dict]:
    """The recovery table of one model: targets and verdicts only for its own plant ``own``."""
    table = _Table(model, effects, min_abs_te, boot)
    for plant in plants:
        judged = plant.name == own
        if plant.spec.site == "neuron":
            _gate_rows(table, plant, rankings.get(plant.name, ()), targets, judged)
        else:
            _band_rows(table, plant, n_layers, targets, judged)
    return table.rows


def _band_rows(table: _Table, plant: Plant, n_layers: int, targets: Targets, judged: bool) -> None:
    def target(text: str, check):
        return (text, check) if judged else ("", None)

    for site in TYPE_SITES:
        planted = site == plant.spec.site
        text, check = target(f">= {targets.type_planted}", lambda v: v >= targets.type_planted) if planted else \
            target(f"<= {targets.type_other}", lambda v: v <= targets.type_other)
        table.ratio(plant.name, f"type_contrast_{site}", f"nie:{plant.name}/type_{site}", text, check)
    text, check = target(f">= {targets.necessity}", lambda v: v >= targets.necessity)
    planted = table.ratio(plant.name, "necessity_planted", f"removed:{plant.name}/planted", text, check)
    for name in ("other_type", "elsewhere"):
        text, check = target("< necessity_planted", lambda v: v < planted)
        table.ratio(plant.name, f"necessity_{name}", f"removed:{plant.name}/{name}", text, check)
    if plant.spec.bypass is not None:  # the decision must not need the band it was trained around
        text, check = target(f"<= {targets.bypass_necessity}", lambda v: v <= targets.bypass_necessity)
        table.ratio(plant.name, "necessity_bypassed", f"removed:{plant.name}/bypassed", text, check)
    prefix = f"nie:{plant.name}/window/{plant.spec.site}/"
    windows = sorted(int(c[len(prefix):]) for c in table.effects.columns if c.startswith(prefix))
    means = [table.effects[f"{prefix}{w}"].mean() for w in windows] if len(table.effects) else []
    if means:
        best = windows[int(np.nanargmax(means))]
        centre = best + (len(plant.band) - 1) / 2
        first, last = plant.band[0], plant.band[-1]
        text, check = target(f"window centre in [{first}, {last}]", lambda v: first <= v <= last)
        table.add(plant.name, "localisation_best_window_centre", centre, target=text,
                  passed=None if check is None else check(centre))


def _gate_rows(table: _Table, plant: Plant, ranked: Sequence[int], targets: Targets, judged: bool) -> None:
    k = len(plant.units)
    hits = len(set(ranked[:k]) & set(plant.units))
    need = targets.gate_recall
    table.add(plant.name, f"gate_recall_at_{k}", hits / k if ranked else float("nan"),
              target=f">= {need}" if judged else "", passed=(hits / k >= need) if judged else None)
    text = f">= {targets.gate_joint}" if judged else ""
    table.ratio(plant.name, "gate_planted_joint_nie", f"nie:{plant.name}/units", text,
                (lambda v: v >= targets.gate_joint) if judged else None)
    text = f">= {targets.necessity}" if judged else ""
    table.ratio(plant.name, "gate_planted_necessity", f"removed:{plant.name}/units", text,
                (lambda v: v >= targets.necessity) if judged else None)
    if f"nie:{plant.name}/ranked" in table.effects.columns:
        table.ratio(plant.name, f"gate_ranked_top{k}_joint_nie", f"nie:{plant.name}/ranked")
        _gate_weighted_rows(table, plant, ranked, hits)
        if hits == k:  # the ranking found every planted unit: nothing left out, exactly (no CI to draw)
            table.add(plant.name, "gate_missed_joint_nie", 0.0)
        elif f"nie:{plant.name}/missed" in table.effects.columns:
            table.ratio(plant.name, "gate_missed_joint_nie", f"nie:{plant.name}/missed")
        else:
            raise ValueError(f"{plant.name}: the ranking misses {k - hits} planted units, but the effects "
                             "hold no patch of them (effects computed with another ranking?)")


def _gate_weighted_rows(table: _Table, plant: Plant, ranked: Sequence[int], hits: int) -> None:
    """Recall weighted by effect, and the precision of the smallest top-ranked set that carries
    80% of the planted units' joint effect. Member recall counts units; these count what the
    units carry, so a ranking that misses only idle planted units loses nothing here."""
    k = len(plant.units)
    if hits in (0, k):  # nothing or everything found: the weighted recall is exactly 0 or 1
        table.add(plant.name, f"gate_effect_weighted_recall_at_{k}", float(hits == k))
    else:
        table.ratio(plant.name, f"gate_effect_weighted_recall_at_{k}", f"nie:{plant.name}/found",
                    denominator=f"nie:{plant.name}/units")
    planted = table.effects[f"nie:{plant.name}/units"].mean() if len(table.effects) else float("nan")
    precision = float("nan")
    for size in gate_ladder(k, len(ranked)):
        column = f"nie:{plant.name}/ranked" if size == k else f"nie:{plant.name}/top/{size}"
        if column in table.effects.columns and table.effects[column].mean() >= 0.8 * planted:
            precision = len(set(ranked[:size]) & set(plant.units)) / size
            break
    table.add(plant.name, "gate_precision_at_80pct_of_planted_nie", precision)


def configured_plants(models: Sequence[Mapping[str, Any]], d_mlp: int) -> list[Plant]:
    """Every fine-tune of the config with a restricted ``trainable``: the ground truths."""
    plants = []
    for index, model in enumerate(models):
        if model.get("source") != "finetune" or model.get("trainable") == "all":
            continue
        spec = parse_trainable(model["trainable"], f"models[{index}].trainable")
        units = tuple(seeded_units(d_mlp, spec.units, model["seed"])) if spec.site == "neuron" else ()
        plants.append(Plant(model["name"], spec, units))
    return plants


def plants_for(manifest: Mapping[str, Any], models: Sequence[Mapping[str, Any]]) -> list[Plant]:
    """The ground truths to test a model against: its own plant (the manifest's ``planted``, the
    units it really trained), or, for a model without one, every configured plant."""
    own = manifest.get("planted")
    if own is None:
        return configured_plants(models, int(manifest["d_mlp"]))
    layers = (own["layer"], own["layer"]) if own["site"] == "neuron" else tuple(own["layers"])
    bypass = tuple(own["bypass"]) if own.get("bypass") else None
    return [Plant(manifest["name"], ComponentSpec(own["site"], layers, own.get("units"), bypass),
                  tuple(own.get("unit_ids") or ()))]


def behaviour_rows(manifest: Mapping[str, Any], own: str | None, n_pairs: int) -> list[dict]:
    """A fine-tune's behaviour check as a recovery row, so a failing model shows in the table."""
    if "behaviour" not in manifest:
        return []
    passed = bool(manifest["behaviour"]["passed"])
    return [{"model": manifest["name"], "plant": own or "", "statistic": "behaviour_check", "value": float(passed),
             "ci_low": float("nan"), "ci_high": float("nan"), "target": "1", "pass": passed, "n_pairs": n_pairs}]


def ranked_units(ranking: pd.DataFrame, metric: str, layer: int) -> list[int]:
    """Units of one layer in the ranking's order (best first); empty when the layer is not ranked."""
    chosen = ranking[(ranking["metric"] == metric) & (ranking["site"] == "neuron") & (ranking["layer"] == layer)]
    return chosen.sort_values("rank", kind="mergesort")["unit"].astype(int).tolist()
