"""Ensemble and post-processed rows (``--ensemble folds a+b``, ``--postprocess``; ``engine.evaluate.ensemble``).

A sweep folder is made by hand from untrained networks of different seeds (no training: fast, and their predictions
differ), and ``evaluate_experiment.py aggregate``'s step adds the rows: the fold/seed ensemble and the cross-model
ensemble equal the average of the members' softmax probabilities computed here, the post-processed rows equal the
members' predictions with the chosen rule applied; one tiny sweep adds the rows with the sweep's own flags.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import integrated_experiment
from dataio.types import CachedCase
from engine.evaluate.commands.aggregate import add_ensembles
from engine.evaluate.ensemble import EnsembleInputs, plan_rows, score_group
from engine.evaluate.ensemble_members import ok_members
from engine.inference import InferenceSettings, case_logits
from engine.options.data_options import DataOptions
from engine.options.evaluate_options import AggregateOptions
from engine.results.job_results import JobFolder
from metrics.postprocess import ComponentStep, PostprocessDecision, apply_rule
from models import create_model
from sweep_helpers import tiny_flags
from utils.checkpoint import save_checkpoint
from utils.schema import CONFIG_JSON, JOBS_DIR, RUNS_CSV, SPLITS_JSON, checkpoint_name

MEMBERS = (("unet3d_xs", 1), ("unet3d_xs", 2), ("unet3d_stride_xs", 1))
KWARGS = dict(in_channels=4, out_channels=4, base=2)
META = dict(fold=None, modalities=["t1", "t1ce", "t2", "flair"], spatial_dims=3, patch_size=[32, 32, 32],
            context_slices=0, val_overlap=0.1, task="brats_segmentation", n_classes=4,
            regions={"wt": [1, 2, 3], "tc": [1, 3], "et": [3]})
REGIONS = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}


def balanced(network: torch.nn.Module) -> torch.nn.Module:
    """An untrained network whose output layer is centred and sharpened, so that its labels are a mixture of small
    components of every class (an untrained network gives one class everywhere)."""
    with torch.no_grad():
        network.eval()
        network.out_conv.weight.mul_(20.0)
        logits = network(torch.randn(1, 4, 32, 32, 32))
        network.out_conv.bias.sub_(logits.mean(dim=(0, 2, 3, 4)))
    return network


def write_member(root: Path, model: str, seed: int) -> None:
    torch.manual_seed(seed)
    network = balanced(create_model(model, **KWARGS))
    path = save_checkpoint(root / checkpoint_name(model, seed, None), network.state_dict(), model_name=model,
                           model_kwargs=KWARGS, meta=dict(META, seed=seed))
    folder = JobFolder.of(root / JOBS_DIR, model, seed, None)
    folder.write_job(dict(model=model, seed=seed, fold=None, index=len(list((root / JOBS_DIR).glob("*")))))
    folder.write_table("runs", [dict(model=model, seed=seed, fold=None, status="ok", source="volbench",
                                     checkpoint=str(path))])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished holdout sweep of three untrained runs (two seeds of unet3d_xs, one of unet3d_stride_xs)."""
    root = tmp_path_factory.mktemp("ensembles")
    out = root / "sweep"
    options = DataOptions(synthetic_cases=7, synthetic_size=(32, 32, 32), cache_dir=str(root / "cache"))
    cases = {c.case_id: c for c in options.load_cases()}
    ids = sorted(cases)
    splits = dict(mode="holdout", split_seed=0, test=ids[:1], folds=[dict(fold=None, train=ids[2:], val=ids[1:2])])
    (out / JOBS_DIR).mkdir(parents=True)
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}
    (out / CONFIG_JSON).write_text(json.dumps(dict(data, resolved_models=["unet3d_xs", "unet3d_stride_xs"],
                                                   amp=False)))
    (out / SPLITS_JSON).write_text(json.dumps(splits))
    for model, seed in MEMBERS:
        write_member(out, model, seed)
    add_ensembles(out, AggregateOptions(results_dir=out, ensemble=["folds", "unet3d_xs+unet3d_stride_xs"],
                                        postprocess=True))
    return dict(out=out, cases=cases, splits=splits)


PROBABILITIES: dict[tuple[str, str, int, str], np.ndarray] = {}


def member_probability(out: Path, model: str, seed: int, case: CachedCase) -> np.ndarray:
    """Softmax of one member's logits, predicted here with the sweep's settings (no ensemble code)."""
    key = (str(out), model, seed, case.case_id)
    if key not in PROBABILITIES:
        PROBABILITIES[key] = _probability(out, model, seed, case)
    return PROBABILITIES[key]


def _probability(out: Path, model: str, seed: int, case: CachedCase) -> np.ndarray:
    payload = torch.load(out / checkpoint_name(model, seed, None), weights_only=True)
    network = create_model(model, **payload["model_kwargs"])
    network.load_state_dict(payload["state_dict"])
    settings = InferenceSettings(modalities=tuple(META["modalities"]), roi_size=(32, 32, 32), overlap=0.1,
                                 device=torch.device("cpu"), spatial_dims=3, amp=False)
    return torch.softmax(case_logits(network.eval(), case, settings), dim=0).numpy()


def hand_dice(labels: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    out = {}
    for name, members in REGIONS.items():
        p, r = np.isin(labels, members), np.isin(reference, members)
        out[f"dice_{name}"] = 2 * (p & r).sum() / (p.sum() + r.sum()) if p.sum() + r.sum() else float("nan")
    return out


def per_case(out: Path, name: str, seed: int = 0) -> pd.DataFrame:
    return JobFolder.of(out / JOBS_DIR, name, seed, None).read_table("per_case").set_index("case_id")


def run_rows(out: Path) -> pd.DataFrame:
    """The run rows of every job folder (what the reducer puts into the runs table)."""
    return pd.DataFrame([JobFolder(p).run_row() for p in sorted((out / JOBS_DIR).iterdir())])


def check_rows(got: pd.DataFrame, cases: dict[str, CachedCase], labels_of: Any) -> None:
    for case_id, row in got.iterrows():
        for key, value in hand_dice(labels_of(cases[case_id]), np.asarray(cases[case_id].label)).items():
            np.testing.assert_allclose(row[key], value, rtol=1e-9, err_msg=f"{case_id} {key}")


def test_the_fold_ensemble_averages_the_members_probabilities(folder: dict[str, Any]) -> None:
    out, cases = folder["out"], folder["cases"]
    got = per_case(out, "unet3d_xs_ensemble")
    assert sorted(got.index) == sorted(folder["splits"]["test"])

    def mean_labels(case: CachedCase) -> np.ndarray:
        members = [member_probability(out, m, s, case) for m, s in MEMBERS if m == "unet3d_xs"]
        labels = np.mean(members, axis=0).argmax(0)
        assert any((labels != p.argmax(0)).any() for p in members)  # the average is not one member's prediction
        return labels

    check_rows(got, cases, mean_labels)
    runs = run_rows(out).set_index("model")
    row = runs.loc["unet3d_xs_ensemble"]
    assert row["source"] == "ensemble" and row["status"] == "ok" and row["epochs"] == 0 and pd.isna(row["fold"])
    assert row["ensemble_members"] == 2 and "unet3d_stride_xs_ensemble" not in runs.index  # one run: no ensemble


def test_the_cross_model_ensemble_averages_every_run_of_both_models(folder: dict[str, Any]) -> None:
    out = folder["out"]
    check_rows(per_case(out, "unet3d_xs+unet3d_stride_xs"), folder["cases"],
               lambda case: np.mean([member_probability(out, m, s, case) for m, s in MEMBERS], axis=0).argmax(0))
    assert run_rows(out).set_index("model").loc["unet3d_xs+unet3d_stride_xs", "ensemble_members"] == 3


def test_the_decision_is_written_and_its_rule_applied_to_each_runs_test_predictions(folder: dict[str, Any]) -> None:
    out = folder["out"]
    decisions = json.loads((out / "postprocessing.json").read_text())
    assert decisions["connectivity"] == 26 and set(decisions["models"]) == {"unet3d_xs", "unet3d_stride_xs"}
    decision = decisions["models"]["unet3d_xs"]
    assert decision["n_validation_cases"] == 2  # two runs x one validation case
    rule = [ComponentStep(s["step"], tuple(s["labels"])) for s in decision["rule"]]
    runs = run_rows(out)
    own = runs[runs["model"] == "unet3d_xs_postprocessed"]
    assert sorted(own["seed"]) == [1, 2] and set(own["postprocessing"]) == {"+".join(s.name for s in rule) or "none"}
    for seed in (1, 2):
        check_rows(per_case(out, "unet3d_xs_postprocessed", seed), folder["cases"],
                   lambda case: apply_rule(member_probability(out, "unet3d_xs", seed, case).argmax(0), rule))
    assert "unet3d_xs_ensemble_postprocessed" in set(runs["model"])


def test_a_rule_is_applied_to_the_ensembles_prediction(folder: dict[str, Any]) -> None:
    out, cases = folder["out"], folder["cases"]
    rule = [ComponentStep("foreground", (1, 2, 3)), ComponentStep("et", (3,))]
    members = ok_members(out, ["unet3d_xs"])
    decision = PostprocessDecision(n_cases=0, rule=list(rule))
    plans = [p for p in plan_rows(["folds"], members, {"unet3d_xs": decision})[("unet3d_xs",)]
             if p.name == "unet3d_xs_ensemble_postprocessed"]
    inputs = EnsembleInputs([cases[c] for c in folder["splits"]["test"]], lambda ids: [cases[c] for c in ids],
                            folder["splits"], out / SPLITS_JSON, torch.device("cpu"), amp=False)
    _, (result,) = score_group(plans, inputs)
    changed = []

    def labels(case: CachedCase) -> np.ndarray:
        plain = np.mean([member_probability(out, "unet3d_xs", s, case) for s in (1, 2)], axis=0).argmax(0)
        changed.append((apply_rule(plain, rule) != plain).any())
        return apply_rule(plain, rule)

    check_rows(pd.DataFrame(result.per_case).set_index("case_id"), cases, labels)
    assert all(changed)  # the rule removed something: the check sees it


def test_a_sweep_adds_the_rows_with_its_own_flags(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    flags = tiny_flags(out, tmp_path / "cache", "--models", "unet3d_xs", "--seeds", "1", "--epochs", "1",
                       "--ensemble", "folds", "--postprocess")  # one run: no ensemble row, a post-processed one
    assert integrated_experiment.main(flags) == 0
    runs = pd.read_csv(out / RUNS_CSV).set_index("model")
    assert set(runs.index) == {"unet3d_xs", "unet3d_xs_postprocessed"}
    assert runs.loc["unet3d_xs_postprocessed", "source"] == "ensemble" and runs.loc["unet3d_xs", "source"] == "volbench"
    assert runs.loc["unet3d_xs_postprocessed", "seed"] == 1 and (runs["status"] == "ok").all()
    decision = json.loads((out / "postprocessing.json").read_text())["models"]["unet3d_xs"]
    label = "+".join(s["step"] for s in decision["rule"]) or "none"
    assert runs.loc["unet3d_xs_postprocessed", "postprocessing"] == label
    if label == "none":  # the rule changed nothing: the row is the run's own
        np.testing.assert_allclose(runs.loc["unet3d_xs_postprocessed", "dice_mean"], runs.loc["unet3d_xs", "dice_mean"],
                                   rtol=1e-9)


def test_ensemble_entries_are_checked_before_training(tmp_path: Path) -> None:
    flags = tiny_flags(tmp_path / "sweep", tmp_path / "cache", "--models", "unet3d_xs", "--epochs", "1",
                       "--ensemble", "unet3d_xs+swin_unetr")
    assert integrated_experiment.main(flags) != 0
    assert not list((tmp_path / "sweep").glob("*.pth"))
