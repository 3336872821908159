"""The charts tell the truth about their data: values read back from the drawn figures equal the CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.text import Annotation

from utils.schema import EPOCHS_CSV
from visualization import boxplots, comparison, efficiency_plots, learning_curves

REGIONS = ("wt", "tc", "et")


def _runs(params: dict[str, float], seeds: tuple[int, ...] = (1, 2, 3)) -> pd.DataFrame:
    """Result rows as the runner writes them: one efficiency measurement per model, copied into each run."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (model, n) in enumerate(params.items()):
        for seed in seeds:
            row = dict(model=model, seed=seed, fold=np.nan, status="ok", params=n, flops_torch=2e9 * (i + 1),
                       latency_ms=250.0 + i, latency_ms_std=12.5 + i, pam_train_mb=100.0 + i,
                       pam_train_mb_std=3.0 + i, pam_infer_mb=40.0, pam_infer_mb_std=0.5)
            row.update({f"dice_{r}": rng.uniform(0.4, 0.9) for r in REGIONS})
            row["dice_mean"] = np.mean([row[f"dice_{r}"] for r in REGIONS])
            rows.append(row)
    return pd.DataFrame(rows)


def _bar_errors(ax: object) -> list[np.ndarray]:
    """Half-lengths of the error bars of each bar group of ``ax`` (one array per group)."""
    out = []
    for container in (c for c in ax.containers if isinstance(c, BarContainer)):
        segments = container.errorbar.lines[2][0].get_segments()
        out.append(np.array([(s[1][1] - s[0][1]) / 2 for s in segments]))
    return out


def _axis(fig: object, title_start: str) -> object:
    return next(ax for ax in fig.axes if ax.get_title().startswith(title_start))


def test_latency_and_pam_error_bars_are_the_measurements_own_std() -> None:
    frame = _runs({"model_a": 5.65e6, "model_b": 22.6e6})
    fig = comparison.comparison_figure(frame)
    expected = frame.groupby("model")[["latency_ms_std", "pam_train_mb_std", "pam_infer_mb_std"]].first()
    (latency,) = _bar_errors(_axis(fig, "Inference latency"))
    np.testing.assert_allclose(latency, expected["latency_ms_std"].to_numpy())
    train, infer = _bar_errors(_axis(fig, "Peak activation memory"))
    np.testing.assert_allclose(train, expected["pam_train_mb_std"].to_numpy())
    np.testing.assert_allclose(infer, expected["pam_infer_mb_std"].to_numpy())
    dice = _bar_errors(_axis(fig, "Test Dice"))
    np.testing.assert_allclose(dice[0], frame.groupby("model")["dice_wt"].std().to_numpy())  # over runs


def test_spread_pools_runs_that_measured_differently() -> None:
    frame = pd.DataFrame(dict(model="m", latency_ms=[10.0, 14.0], latency_ms_std=[1.0, 1.0]))
    means, spread = comparison.measurement_spread(frame, ["latency_ms"])
    assert means.at["m", "latency_ms"] == 12.0
    assert spread.at["m", "latency_ms"] == pytest.approx(np.sqrt(1.0 + 4.0))  # within-run and between-run


def _points(ax: object) -> list[tuple[float, float]]:
    return [(c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0]) for c in ax.containers
            if isinstance(c, ErrorbarContainer)]


def test_efficiency_points_of_equal_size_are_apart_and_labels_inside() -> None:
    frame = _runs({"unet3d_xs": 5.65e6, "unet3d_stride_xs": 5.65e6, "dualbranch_01_unet_xs": 5.48e6})
    fig = efficiency_plots.efficiency_figure(frame)
    fig.draw_without_rendering()
    params = _axis_by_xlabel(fig, "parameters")
    xs = sorted(x for x, _ in _points(params))
    assert len(set(np.round(xs, 6))) == 3  # the two 5.65M models are drawn apart ...
    assert np.mean(xs[1:]) == pytest.approx(5.65)  # ... around their true value
    assert params.get_xscale() == "linear"  # 5.48M..5.65M spans no decade
    means = frame.groupby("model")["dice_mean"].mean()
    assert sorted(y for _, y in _points(params)) == pytest.approx(sorted(means))
    for ax in fig.axes:
        box = ax.get_window_extent()
        for label in (t for t in ax.texts if isinstance(t, Annotation)):
            extent = label.get_window_extent()
            assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1, \
                (label.get_text(), ax.get_xlabel())
        assert "mean of WT, TC, ET" in ax.get_ylabel()


def _axis_by_xlabel(fig: object, start: str) -> object:
    return next(ax for ax in fig.axes if ax.get_xlabel().startswith(start))


def test_efficiency_uses_a_log_axis_only_over_a_decade() -> None:
    fig = efficiency_plots.efficiency_figure(_runs({"small": 1e6, "large": 12e6}))
    params = _axis_by_xlabel(fig, "parameters")
    assert params.get_xscale() == "log" and params.get_xlabel().endswith("log scale")
    assert _axis_by_xlabel(fig, "PAM train").get_xscale() == "linear"  # 100..101 MB


def test_boxplots_draw_every_case_and_state_n() -> None:
    rng = np.random.default_rng(1)
    rows = [dict(model=m, seed=s, fold=np.nan, case_id=f"c{k}", dice_wt=rng.uniform(), dice_tc=rng.uniform(),
                 dice_et=np.nan if k < 2 else rng.uniform()) for m in ("a", "b") for s in (1, 2) for k in range(5)]
    frame = pd.DataFrame(rows)
    long = boxplots.long_dice(frame, list(REGIONS))
    fig = boxplots.boxplot_figure(long, list(REGIONS))
    ax = fig.axes[0]
    drawn = sum(len(c.get_offsets()) for c in ax.collections)
    assert drawn == int(frame[[f"dice_{r}" for r in REGIONS]].notna().sum().sum()) == 52
    counts = sorted(int(t.get_text()[2:]) for t in ax.texts if t.get_text().startswith("n="))
    assert counts == sorted([10, 10, 6] * 2)  # ET has two cases without Dice per run


def test_learning_curves_name_the_dice_they_plot(tmp_path: Path) -> None:
    epochs = pd.DataFrame([dict(model="m", seed=1, fold=np.nan, epoch=e, train_loss=1.0 / e, val_loss=1.0 / e,
                                val_dice_wt=0.5, val_dice_tc=0.4, val_dice_et=0.3, val_dice_mean=0.4)
                           for e in (1, 2)])
    epochs.to_csv(tmp_path / EPOCHS_CSV, index=False)
    fig = learning_curves.learning_figure(*learning_curves.epoch_frame(tmp_path, None))
    titles = [ax.get_title() for ax in fig.axes]
    assert any("mean of WT, TC, ET" in t for t in titles), titles
    epochs.drop(columns=["val_dice_tc", "val_dice_et"]).rename(columns={"val_dice_wt": "val_dice_ich"}).to_csv(
        tmp_path / EPOCHS_CSV, index=False)
    fig = learning_curves.learning_figure(*learning_curves.epoch_frame(tmp_path, None))
    assert any("mean of ICH" in ax.get_title() for ax in fig.axes)


def test_learning_curves_add_a_map_panel_on_the_lesion_track(tmp_path: Path) -> None:
    rows = [dict(model="retinanet", seed=1, fold=np.nan, epoch=e, train_loss=1.0 / e, val_map=0.1 * e) for e in (1, 2)]
    rows += [dict(model="unet3d_xs", seed=1, fold=np.nan, epoch=e, train_loss=1.0 / e, val_dice_ich=0.2 * e)
             for e in (1, 2)]
    pd.DataFrame(rows).to_csv(tmp_path / EPOCHS_CSV, index=False)
    fig = learning_curves.learning_figure(*learning_curves.epoch_frame(tmp_path, None))
    assert len(fig.axes) == 3 and "mAP" in fig.axes[2].get_title()
    (line,) = fig.axes[2].get_lines()  # only the detector has validation mAP
    assert line.get_label() == "retinanet" and list(line.get_ydata()) == pytest.approx([0.1, 0.2])
