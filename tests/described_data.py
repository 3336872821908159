"""Tiny datasets written in nnU-Net raw and MONAI datalist layouts (for the tests of ``dataio.nnunet_raw``,
``dataio.datalist`` and the multi-class task): 16^3 volumes, two channels, labels 0-3 as nested blobs
(3 inside 2 inside 1), so the BraTS-like regions {1, 2, 3} ⊃ {2, 3} ⊃ {3} are all non-empty."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dataio.nifti_io import save_volume

SIZE = 16
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
LABELS = {"background": 0, "oedema": 1, "core": 2, "enhancing": 3}
REGION_LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}


def case_arrays(index: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (SIZE^3, 2 channels last), label) of case ``index``: a blob whose intensity follows its labels."""
    rng = np.random.default_rng(index)
    grid = np.indices((SIZE,) * 3).astype(np.float32)
    centre = rng.uniform(6, 10, size=3)
    dist = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
    label = np.zeros((SIZE,) * 3, dtype=np.uint8)
    for value, radius in ((1, 6.0), (2, 4.0), (3, 2.0)):
        label[dist < radius] = value
    image = np.stack([100 + 40 * label + rng.normal(0, 5, label.shape),
                      50 + 20 * (label > 1) + rng.normal(0, 5, label.shape)], axis=-1).astype(np.float32)
    return image, label


def write_nnunet(root: Path, *, n_train: int = 6, n_test: int = 2, labels: dict[str, Any] | None = None,
                 with_test: bool = True) -> Path:
    """An nnU-Net raw dataset at ``root``: CASE_XXX in imagesTr/labelsTr, TEST_XXX in imagesTs/labelsTs, a
    ``dataset.json`` with two MRI channels and ``labels`` (default: the BraTS-like regions)."""
    labels = REGION_LABELS if labels is None else labels
    parts = [("imagesTr", "labelsTr", f"CASE_{i:03d}", i) for i in range(n_train)]
    if with_test:
        parts += [("imagesTs", "labelsTs", f"TEST_{i:03d}", 100 + i) for i in range(n_test)]
    for images, label_dir, case, seed in parts:
        image, label = case_arrays(seed)
        for k in range(image.shape[-1]):
            save_volume(root / images / f"{case}_{k:04d}.nii.gz", image[..., k], AFFINE)
        save_volume(root / label_dir / f"{case}.nii.gz", label, AFFINE)
    meta: dict[str, Any] = {"channel_names": {"0": "T1w", "1": "FLAIR"}, "labels": labels, "numTraining": n_train,
                            "file_ending": ".nii.gz"}
    meta.update(_region_order(labels))
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _region_order(labels: dict[str, Any]) -> dict[str, Any]:
    """nnU-Net's ``regions_class_order`` (the highest label of each foreground entry) when ``labels`` has regions."""
    if not any(isinstance(v, list) for v in labels.values()):
        return {}
    return {"regions_class_order": [max(v) if isinstance(v, list) else v for v in labels.values() if v != 0]}


def write_splits_final(path: Path, folds: list[tuple[list[str], list[str]]]) -> Path:
    """nnU-Net's ``splits_final.json``: one ``{"train": [...], "val": [...]}`` per fold."""
    path.write_text(json.dumps([{"train": t, "val": v} for t, v in folds]))
    return path


def write_datalist(root: Path, *, n_train: int = 6, n_test: int = 2, folds: int | None = 2,
                   labels: dict[str, Any] | None = None) -> Path:
    """A MONAI datalist at ``root/datalist.json``: one 4D two-channel image per case (``images/``), labels in
    ``labels/``, ``fold`` = index % ``folds`` (None: no fold keys), ``testing`` entries with labels."""
    def entry(name: str, seed: int) -> dict[str, Any]:
        image, label = case_arrays(seed)
        save_volume(root / "images" / f"{name}.nii.gz", image, AFFINE)
        save_volume(root / "labels" / f"{name}.nii.gz", label, AFFINE)
        return {"image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz"}

    training = [entry(f"dl_{i:03d}", i) for i in range(n_train)]
    if folds is not None:
        for i, item in enumerate(training):
            item["fold"] = i % folds
    meta: dict[str, Any] = {"training": training, "testing": [entry(f"dlt_{i:03d}", 100 + i) for i in range(n_test)]}
    if labels is not None:
        meta["labels"] = labels
        meta.update(_region_order(labels))
    (root / "datalist.json").write_text(json.dumps(meta))
    return root / "datalist.json"
