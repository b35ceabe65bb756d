"""Effects and figures on synthetic effect tables with a planted structure (claim statistics:
test_claims.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harmmed.analyses import selection
from harmmed.figures import plotting
from harmmed.stats import effects

N_LAYERS = 12
N_PAIRS = 24
METRICS = ("harm", "refusal")
MANIFEST = {"name": "synthetic", "n_layers": N_LAYERS, "d_model": 16, "d_mlp": 64,
            "architecture": "LlamaForCausalLM"}
PROMPT_LEN = {f"p{i:02d}": 10 + i % 3 for i in range(N_PAIRS)}


def profile(kind: str) -> np.ndarray:
    """Per-layer shape of a planted effect (fractions of TE)."""
    layers = np.arange(N_LAYERS)
    if kind == "late":
        return np.where(layers >= selection.late_third_start(N_LAYERS), 1.0, 0.05)
    if kind == "early":
        return np.where(layers < N_LAYERS // 3, 1.0, 0.05)
    # "flat": equal mass in the middle and last thirds, so the late share is exactly 0.5.
    return np.where(layers >= N_LAYERS // 3, 0.5, 0.0)


def rows(metric: str, kind: str, site: str, effects_by_layer: np.ndarray, te: np.ndarray,
         positions: str = "all", window: int = 1, layers: np.ndarray | None = None,
         pair_ids: list[str] | None = None, **extra: str) -> list[dict]:
    """Tidy rows for pairs x layers of planted effects (y_benign 0, y_harmful = TE)."""
    layers = np.arange(N_LAYERS) if layers is None else layers
    pair_ids = sorted(PROMPT_LEN) if pair_ids is None else pair_ids
    out = []
    for i, pid in enumerate(pair_ids):
        for j, layer in enumerate(layers):
            e = float(effects_by_layer[i, j])
            out.append(dict(pair_id=pid, metric=metric, kind=kind, site=site, layer=int(layer),
                            window=window, positions=positions, y_benign=0.0,
                            y_harmful=float(te[i]), y_patched=e, effect=e, **extra))
    return out


def synthetic(structure: str, noise: float = 0.05, seed: int = 0
              ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """layer, module and severed tables; `structure` is planted, opposite or null."""
    rng = np.random.default_rng(seed)
    layer_rows, module_rows, severed_rows = [], [], []
    shape = {"planted": "late", "opposite": "early", "null": "flat"}[structure]
    mlp_gain, attn_gain = {"planted": (1.0, 0.1), "opposite": (0.1, 1.0),
                           "null": (0.5, 0.5)}[structure]
    keep_mlp, keep_attn = {"planted": (0.2, 0.9), "opposite": (0.9, 0.2),
                           "null": (0.6, 0.6)}[structure]
    for metric in METRICS:
        sign = -1.0 if metric == "harm" else 1.0  # harm moves down: tests the orientation
        te = sign * rng.normal(2.0, 0.2, N_PAIRS)

        def eff(shape_vec: np.ndarray) -> np.ndarray:
            # Antithetic noise (pairs 2k and 2k+1 get +z and -z): the full-sample mean carries
            # no noise, so a null statistic sits exactly on its threshold.
            z = rng.normal(0.0, noise * 2.0, (N_PAIRS // 2, N_LAYERS))
            return te[:, None] * shape_vec[None, :] + np.stack([z, -z], axis=1).reshape(
                N_PAIRS, N_LAYERS)

        ones = np.ones(N_LAYERS)
        for pos in ("all", "post", "last"):
            nie = eff(profile(shape) if pos != "all" else ones)
            layer_rows += rows(metric, "NIE", "residual", nie, te, pos)
            layer_rows += rows(metric, "NDE", "residual", eff(1.0 - profile(shape)), te, pos)
        late = np.arange(N_LAYERS) >= selection.late_half_start(N_LAYERS)
        early = ~late
        for site, gain in (("mlp", mlp_gain), ("attn", attn_gain)):
            site_shape = gain * late / 4
            for pos in ("all", "post"):
                module_rows += rows(metric, "NIE", site, eff(site_shape), te, pos)
                module_rows += rows(metric, "NIE", site, eff(site_shape), te, pos, window=3)
        for cut, keep in (("none", 1.0), ("mlp", keep_mlp), ("attn", keep_attn)):
            shape_vec = np.where(early, keep, 1.0)
            severed_rows += rows(metric, "NIE", "residual", eff(shape_vec), te, severed=cut)
        # Heatmap rows: two pairs, every absolute position, residual (with embeddings) and modules.
        for pid in ("p00", "p01"):
            i = sorted(PROMPT_LEN).index(pid)
            length = PROMPT_LEN[pid]
            for p in range(length):
                local = np.where(p == length - 1, te[i], 0.0)
                for site, layers, target in (("residual", np.arange(-1, N_LAYERS), layer_rows),
                                             ("mlp", np.arange(N_LAYERS), module_rows),
                                             ("attn", np.arange(N_LAYERS), module_rows)):
                    vals = local * profile(shape)[np.clip(layers, 0, None)][None, :]
                    target += rows(metric, "NIE", site, vals + rng.normal(0, 0.01, vals.shape),
                                   te[[i]], str(p), layers=layers, pair_ids=[pid])
    return pd.DataFrame(layer_rows), pd.DataFrame(module_rows), pd.DataFrame(severed_rows)


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return synthetic("planted")


def test_bootstrap_ci_covers_true_mean_and_is_seeded() -> None:
    values = np.random.default_rng(1).normal(3.0, 1.0, 4000)
    low, high = effects.bootstrap_ci(values, n_boot=1000, ci=0.95, seed=7)
    assert low < 3.0 < high
    assert high - low < 0.1
    assert effects.bootstrap_ci(values, n_boot=1000, ci=0.95, seed=7) == (low, high)
    assert effects.bootstrap_ci(values, n_boot=1000, ci=0.95, seed=8) != (low, high)
    med_low, med_high = effects.bootstrap_ci(values, stat=np.median, n_boot=500, seed=0)
    assert med_low < 3.0 < med_high


def test_paired_bootstrap_shares_one_resample_across_columns() -> None:
    x = np.random.default_rng(2).normal(size=(30, 1))
    matrix = np.hstack([x, 2 * x, x + 1])
    means, boot = effects.paired_bootstrap_means(matrix, n_boot=200, seed=3)
    np.testing.assert_allclose(boot[:, 1], 2 * boot[:, 0])
    np.testing.assert_allclose(boot[:, 2], boot[:, 0] + 1)
    np.testing.assert_allclose(means, matrix.mean(axis=0))
    low, high = effects.bootstrap_ci(x[:, 0], n_boot=200, seed=3)
    np.testing.assert_allclose(np.quantile(boot[:, 0], [0.025, 0.975]), [low, high])


def test_summarize_counts_ci_and_proportions() -> None:
    te = np.array([2.0, 2.0, 2.0, 0.05, -0.01])
    effect = np.array([[1.0, 2.0], [1.2, 1.8], [0.8, 2.2], [5.0, 0.0], [5.0, 0.0]])
    ids = [f"q{i}" for i in range(5)]
    df = pd.DataFrame(rows("refusal", "NIE", "residual", effect, te, "post",
                           layers=np.array([3, 1]), pair_ids=ids))
    df = df.iloc[::-1]  # input order must not matter
    out = effects.summarize(df, n_boot=300, ci=0.9, seed=4, min_abs_te=0.1)
    assert list(out.columns) == [*effects.GROUP_KEYS, *effects.SUMMARY_COLUMNS]
    assert out["layer"].tolist() == [1, 3]
    assert out["n_pairs"].tolist() == [5, 5]
    assert out["n_excluded"].tolist() == [2, 2]
    np.testing.assert_allclose(out["mean_effect"], effect[:, ::-1].mean(axis=0))
    np.testing.assert_allclose(out["mean_te"], te.mean())
    np.testing.assert_allclose(out["proportion_mediated"], [1.0, 0.5])
    low, high = effects.bootstrap_ci(effect[:, 1], n_boot=300, ci=0.9, seed=4)
    np.testing.assert_allclose(out.loc[0, ["ci_low", "ci_high"]].astype(float), [low, high])
    pd.testing.assert_frame_equal(out, effects.summarize(df.iloc[::-1], n_boot=300, ci=0.9,
                                                         seed=4, min_abs_te=0.1))


def test_summarize_orders_positions_and_keeps_severed(planted) -> None:
    layer_df, _, severed_df = planted
    out = effects.summarize(layer_df[layer_df["metric"] == "refusal"], n_boot=100)
    named = out[out["positions"].isin(["all", "post", "last"])]
    assert named["positions"].drop_duplicates().tolist() == ["all", "post", "last"]
    heat = out[~out["positions"].isin(["all", "post", "last"])]
    assert heat["n_pairs"].max() <= 2
    first_layer = heat[heat["layer"] == -1]["positions"].astype(int).tolist()
    assert first_layer == sorted(first_layer)
    sev = effects.summarize(severed_df, n_boot=100)
    assert "severed" in sev.columns
    assert sev["severed"].drop_duplicates().tolist() == ["none", "mlp", "attn"]
    assert (sev["n_pairs"] == N_PAIRS).all()


def inputs_for_heatmap() -> list[dict]:
    return [dict(pair_id=pid, split="discovery", category="c", harmful_ids=list(range(n)),
                 benign_ids=list(range(n)), target_ids=[1, 2], post_positions=[n - 2, n - 1])
            for pid, n in PROMPT_LEN.items()]


def all_figures(planted, out: Path) -> list[Path]:
    layer_df, module_df, severed_df = planted
    tokens = {"p00": [f"t{i}" for i in range(PROMPT_LEN["p00"] - 1)] + ["$\n"]}
    other = layer_df.assign(effect=layer_df["effect"] * 0.5)
    # Heatmap rows of one metric only (keeps the test fast); the other metric gets the placeholder.
    heat_layer = layer_df[(layer_df["metric"] == "refusal") | (layer_df["positions"] == "post")]
    return [
        *plotting.plot_layer_curves(layer_df, MANIFEST, out / "layer", n_boot=200),
        *plotting.plot_heatmaps(pd.concat([heat_layer, module_df[module_df["metric"] == "refusal"]]),
                                inputs_for_heatmap(), tokens, MANIFEST, out / "heatmap"),
        *plotting.plot_module_curves(module_df, MANIFEST, out / "module", n_boot=200),
        *plotting.plot_severed(severed_df, MANIFEST, out / "severed", n_boot=200),
        *plotting.plot_cross_model({"b": other, "a": layer_df},
                                   {"a": MANIFEST, "b": {**MANIFEST, "n_layers": N_LAYERS}},
                                   out / "cross_model", n_boot=200),
    ]


def render_in_subprocess(out: Path) -> subprocess.Popen:
    """Render every figure in a fresh interpreter (other hash seed), in parallel with the test."""
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "import test_effects_claims_plots as t; "
            "t.all_figures(t.synthetic('planted'), Path(sys.argv[2]))")
    return subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), str(out)],
                            stderr=subprocess.PIPE, text=True)


def test_figures_are_written_and_byte_identical_across_processes(planted, tmp_path: Path
                                                                  ) -> None:
    child = render_in_subprocess(tmp_path / "b")
    first = all_figures(planted, tmp_path / "a")
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    names = sorted(p.name for p in first)
    assert names == sorted([f"{stem}.{ext}" for ext in ("png", "pdf") for stem in (
        "layer", "heatmap_harm", "heatmap_refusal", "module", "severed", "cross_model")])  # harm: a placeholder
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == names
    for a in first:
        assert a.stat().st_size > 1000
        assert a.read_bytes() == (tmp_path / "b" / a.name).read_bytes(), a.name


def test_heatmaps_without_rows_still_write_every_figure(tmp_path):
    """Unpaired prompts give no heatmap rows; the workflow still expects one figure per metric."""
    from harmmed.constants import ROW_COLUMNS

    written = plotting.plot_heatmaps(pd.DataFrame(columns=ROW_COLUMNS), [], {}, MANIFEST, tmp_path / "heatmap")
    assert sorted(p.name for p in written) == ["heatmap_harm.pdf", "heatmap_harm.png",
                                               "heatmap_refusal.pdf", "heatmap_refusal.png"]
    assert all(p.stat().st_size > 1000 for p in written)
