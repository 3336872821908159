"""Slice overlays (from NIfTI files, no torch) and Grad-CAM 3D (MONAI) of a tiny network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import torch

from visualization.overlays import draw_case_overlay, largest_area_slice, legend_handles, overlay_figure

SHAPE = (20, 18, 16)
MODS = ("t1", "t1ce", "t2", "flair")


def _write(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


@pytest.fixture()
def case_files(tmp_path: Path) -> tuple[dict[str, Path], Path, dict[str, Path]]:
    rng = np.random.default_rng(0)
    images = {m: _write(tmp_path / f"c_{m}.nii.gz", rng.uniform(1, 100, SHAPE).astype(np.float32)) for m in MODS}
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[6:14, 5:12, 9] = 2  # slice 9 holds the largest area
    label[8:12, 7:10, 6:12] = 4
    label[9:11, 8:9, 8:10] = 1
    preds = {}
    for k, name in enumerate(("model_a", "model_b")):
        pred = np.roll(label, k, axis=0)
        preds[name] = _write(tmp_path / f"{name}.nii.gz", pred)
    return images, _write(tmp_path / "c_seg.nii.gz", label), preds


def test_largest_area_slice() -> None:
    mask = np.zeros((5, 5, 6), dtype=bool)
    mask[1:4, 1:4, 4] = True
    mask[2, 2, 1] = True
    assert largest_area_slice(mask, axis=2) == 4
    assert largest_area_slice(np.zeros((4, 4, 6), dtype=bool), axis=2) == 3


def test_legend_names_file_labels_of_the_convention() -> None:
    assert [h.get_label() for h in legend_handles("brats2021")] == ["NCR/NET (1)", "ED (2)", "ET (4)"]
    assert [h.get_label() for h in legend_handles("brats2023")][-1] == "ET (3)"


def _shown(fig: object) -> list[str]:
    """Titles of the panels that hold an image, in reading order."""
    return [ax.get_title() for ax in fig.axes if ax.images]


def test_overlay_shows_inputs_once_and_each_run_with_its_dice(case_files: tuple, tmp_path: Path) -> None:
    images, label, preds = case_files
    scores = {"model_a": "Dice WT 0.91 TC 0.80 ET 0.75", "model_b": "Dice WT 0.50 TC n/a ET 0.10"}
    titles = _shown(overlay_figure("c", images, preds, label=label, scores=scores))
    assert titles == [*MODS, "ground truth", f"model_a\n{scores['model_a']}", f"model_b\n{scores['model_b']}"]
    many = {f"run_{k}": preds["model_a"] for k in range(7)}  # wrapped into rows of 5 panels
    fig = overlay_figure("c", images, many, label=None)
    assert _shown(fig)[:5] == [*MODS, "no ground truth"] and len(_shown(fig)) == 5 + 7
    assert sum(t in MODS for t in _shown(fig)) == 4
    out = draw_case_overlay("c", images, preds, tmp_path / "two.png", label=label, scores=scores)
    assert mpimg.imread(out).shape[0] > 100


def test_overlay_rejects_mismatched_files(case_files: tuple, tmp_path: Path) -> None:
    images, label, preds = case_files
    bad = _write(tmp_path / "bad.nii.gz", np.zeros((SHAPE[0] + 1, *SHAPE[1:]), dtype=np.uint8))
    with pytest.raises(ValueError, match="bad.nii.gz"):
        draw_case_overlay("c", images, {"x": bad}, tmp_path / "o.png", label=label)
    with pytest.raises(ValueError, match="c_seg.nii.gz"):  # label 3 is not a brats2021 label
        _write(label, np.full(SHAPE, 3, dtype=np.uint8))
        draw_case_overlay("c", images, preds, tmp_path / "o.png", label=label)


def test_overlays_module_does_not_import_torch() -> None:
    code = "import sys, visualization, visualization.overlays; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def tiny_net() -> torch.nn.Module:
    from models import create_model

    torch.manual_seed(0)
    return create_model("unet3d_xs", in_channels=4, out_channels=4, base=2).eval()


def test_class_scores_are_masked_means(tiny_net: torch.nn.Module) -> None:
    from visualization.gradcam import ClassScores

    x = torch.randn(1, 4, 16, 16, 16)
    scores = ClassScores(tiny_net)(x)
    logits = tiny_net(x)
    assert scores.shape == (1, 4)
    predicted = logits.argmax(1)[0]
    for k in range(4):
        mask = predicted == k
        expected = logits[0, k][mask].mean() if mask.any() else logits[0, k].mean()
        assert scores[0, k].item() == pytest.approx(expected.item(), rel=1e-5)


def _manual_gradcam(net: torch.nn.Module, x: torch.Tensor, layer: str, k: int) -> np.ndarray:
    """Grad-CAM written out with a forward hook and autograd: relu(sum_c mean(dS/dA_c) A_c), upsampled, scaled."""
    from visualization.gradcam import ClassScores

    store = {}
    handle = dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: store.update(a=o))
    x = x.clone().requires_grad_(True)  # MONAI's backward hooks stay on the net; they expect an input gradient
    score = ClassScores(net)(x)[0, k]
    handle.remove()
    (grad,) = torch.autograd.grad(score, store["a"])
    cam = torch.relu((grad.mean(dim=(2, 3, 4), keepdim=True) * store["a"]).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[2:], mode="trilinear", align_corners=False)[0, 0]
    cam = cam.detach().numpy()
    return (cam - cam.min()) / (cam.max() - cam.min())


def test_gradcam_matches_the_definition(tiny_net: torch.nn.Module) -> None:
    from visualization.gradcam import gradcam_window

    image = np.random.default_rng(2).standard_normal((4, 16, 16, 16)).astype(np.float32)
    for layer, k in (("enc1", 1), ("dec2", 3)):
        heat, _ = gradcam_window(tiny_net, image, layer, k, (16, 16, 16))
        expected = _manual_gradcam(tiny_net, torch.from_numpy(image)[None], layer, k)
        np.testing.assert_allclose(heat, expected, atol=1e-4)
        assert not tiny_net.training  # the model's mode is left as it was


def test_gradcam_map_and_png(tiny_net: torch.nn.Module, tmp_path: Path) -> None:
    from visualization.gradcam import gradcam_window, save_gradcam_overlay

    rng = np.random.default_rng(1)
    image = rng.standard_normal((4, 20, 24, 28)).astype(np.float32)
    focus = np.zeros(image.shape[1:], dtype=bool)
    focus[14:18, 16:20, 20:24] = True
    heat, window = gradcam_window(tiny_net, image, "dec2", 3, (16, 16, 16), focus)
    assert heat.shape == (16, 16, 16) and [s.stop - s.start for s in window] == [16, 16, 16]
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() == pytest.approx(1.0) and heat.std() > 0
    assert all(s.start <= c < s.stop for s, c in zip(window, (16, 18, 22)))  # centred on the focus
    small = rng.standard_normal((4, 10, 12, 14)).astype(np.float32)  # smaller than the window: padded
    heat_small, _ = gradcam_window(tiny_net, small, "enc2", 1, (16, 16, 16))
    assert heat_small.shape == (10, 12, 14)
    out = save_gradcam_overlay(tiny_net, image, tmp_path / "cam.png", layer="dec1", class_idx=3,
                               roi_size=(16, 16, 16), focus=focus)
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError, match="did you mean"):
        gradcam_window(tiny_net, image, "dec", 3, (16, 16, 16))
