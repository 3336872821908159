"""Released weights (utils/pretrained.py): SAM-Med3D's checkpoint formats load bit-exactly under weights-only
unpickling, anything else pickled is refused in one line, every missing / unexpected / mis-shaped key is named,
and ``--pretrained_checkpoint`` takes ``MODEL=PATH`` entries."""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine.options.config import parse_config
from engine.options.resume_check import resume_differences
from utils.checkpoint import save_checkpoint
from utils.pretrained import (LoadReport, check_pretrained_models, load_pretrained, parse_pretrained,
                              pretrained_for, read_checkpoint)


class TinyPromptable(nn.Module):
    """SAM-like layout in miniature: image encoder (with BatchNorm buffers), prompt encoder, mask decoder and a
    non-persistent buffer (as SAM-Med3D's ``pixel_mean``), which is not a weight."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.image_encoder = nn.Sequential(nn.Conv3d(1, width, 3, padding=1), nn.BatchNorm3d(width))
        self.prompt_encoder = nn.Embedding(2, width)
        self.mask_decoder = nn.Conv3d(width, 1, 1)
        self.register_buffer("pixel_mean", torch.zeros(1), persistent=False)


class Opaque:
    """Stands for any object a safe load must refuse."""


def _model(seed: int) -> TinyPromptable:
    torch.manual_seed(seed)
    model = TinyPromptable()
    bn = model.image_encoder[1]
    bn.running_mean.uniform_(-1, 1)  # buffers differ between seeds too
    bn.running_var.uniform_(0.5, 2)
    bn.num_batches_tracked.fill_(seed)
    return model


def _training_dict(model: nn.Module) -> dict:
    """SAM-Med3D's training checkpoint: weights beside the optimiser, an argparse.Namespace and NumPy scalars."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    args = argparse.Namespace(lr=np.float64(8e-4), batch_size=np.int64(2), task_name="ft", multi_click=False)
    return {"epoch": 7, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
            "lr_scheduler_state_dict": {"last_epoch": 7}, "losses": [0.5, 0.4], "dices": [np.float64(0.71)],
            "best_loss": np.float64(0.123), "best_dice": np.float64(0.81), "step": np.int64(1234), "args": args}


def _assert_same_weights(loaded: nn.Module, source: nn.Module) -> None:
    expected = source.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_sam_med3d_training_dict_loads_bit_exactly(tmp_path: Path) -> None:
    source, path = _model(1), tmp_path / "sam_med3d_turbo.pth"
    torch.save(_training_dict(source), path)
    with pytest.raises(Exception):  # the file really needs the extra safe globals
        torch.load(path, weights_only=True)
    fresh = _model(2)
    report = load_pretrained(fresh, path)
    _assert_same_weights(fresh, source)
    assert report == LoadReport(loaded=len(source.state_dict()), missing=(), unexpected=())
    assert "pixel_mean" not in source.state_dict()  # non-persistent: never asked for


@pytest.mark.parametrize("layout", ["bare", "module_prefix", "state_dict_key", "volbench"])
def test_other_layouts_load_bit_exactly(layout: str, tmp_path: Path) -> None:
    source, path = _model(1), tmp_path / f"{layout}.pth"
    state = source.state_dict()
    if layout == "volbench":
        save_checkpoint(path, state, model_name="tiny", model_kwargs={}, meta={})
    else:
        payload = {"bare": state, "module_prefix": {f"module.{k}": v for k, v in state.items()},
                   "state_dict_key": {"state_dict": state, "epoch": 3, "best": np.float64(0.5)}}[layout]
        torch.save(payload, path)
    fresh = _model(2)
    load_pretrained(fresh, path)
    _assert_same_weights(fresh, source)


def test_a_file_written_under_numpy_1_loads(tmp_path: Path) -> None:
    """NumPy 1 pickles scalars as numpy.core.multiarray.scalar: allowed under that name as well."""
    source, path = _model(1), tmp_path / "numpy1.pth"
    torch.save({"model_state_dict": source.state_dict(), "best_loss": np.float64(0.25)}, path,
               _use_new_zipfile_serialization=False)  # legacy format: the pickle's text can be edited in place
    raw = path.read_bytes()
    names = (b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    if names[0] in raw:
        path.write_bytes(raw.replace(names[0], names[1]))
    assert names[1] in path.read_bytes()
    fresh = _model(2)
    load_pretrained(fresh, path)
    _assert_same_weights(fresh, source)
    assert read_checkpoint(path)["best_loss"] == 0.25


@pytest.mark.parametrize("intruder, type_name", [(pathlib.Path("weights") / "x.pth", "Path"), (Opaque(), "Opaque")])
def test_other_objects_are_refused_in_one_line(intruder: object, type_name: str, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    source, path = _model(1), tmp_path / "unsafe.pth"
    torch.save({"model_state_dict": source.state_dict(), "extra": intruder}, path)
    fresh = _model(2)
    with pytest.raises(ValueError) as error:
        load_pretrained(fresh, path)
    message = str(error.value)
    assert "\n" not in message and type_name in message and "--allow_pickle_checkpoint" in message, message
    assert str(path) in message
    with caplog.at_level(logging.WARNING, logger="volbench.pretrained"):
        load_pretrained(fresh, path, allow_pickle=True)
    _assert_same_weights(fresh, source)
    assert "weights_only=False" in caplog.text


def test_a_missing_weight_is_an_error_naming_it(tmp_path: Path) -> None:
    state = _model(1).state_dict()
    del state["mask_decoder.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"lacks 1 weight\(s\) of the model: mask_decoder\.weight"):
        load_pretrained(_model(2), tmp_path / "partial.pth")
    wide = nn.Sequential(*[nn.Linear(1, 1) for _ in range(6)])  # 11 missing: the first 10 named, then the count
    torch.save({"0.weight": torch.ones(1, 1)}, tmp_path / "nearly_empty.pth")
    with pytest.raises(ValueError, match=r"lacks 11 weight\(s\) of the model: 0\.bias, 1\.weight, .*, "
                                         r"5\.weight, \.\.\. \(11 in all\)$") as error:
        load_pretrained(wide, tmp_path / "nearly_empty.pth")
    assert str(error.value).count(", ") == 10


def test_unexpected_keys_are_reported_and_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = _model(1)
    state = dict(source.state_dict(), **{"iou_head.weight": torch.ones(3)})
    torch.save(state, tmp_path / "more.pth")
    fresh = _model(2)
    with caplog.at_level(logging.WARNING, logger="volbench.pretrained"):
        report = load_pretrained(fresh, tmp_path / "more.pth")
    assert report.unexpected == ("iou_head.weight",) and report.missing == ()
    assert "iou_head.weight" in caplog.text
    _assert_same_weights(fresh, source)


def test_a_shape_mismatch_names_the_key_and_both_shapes(tmp_path: Path) -> None:
    state = _model(1).state_dict()
    state["mask_decoder.weight"] = torch.zeros(2, 4, 1, 1, 1)
    torch.save(state, tmp_path / "wide.pth")
    fresh = _model(2)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=r"mask_decoder\.weight: model \(1, 4, 1, 1, 1\), file \(2, 4, 1, 1, 1\)"):
        load_pretrained(fresh, tmp_path / "wide.pth")
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())  # nothing was copied


def test_a_file_without_a_state_dict_is_refused(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "notes": "none"}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="holds no state dict"):
        load_pretrained(_model(1), tmp_path / "empty.pth")
    with pytest.raises(FileNotFoundError):
        load_pretrained(_model(1), tmp_path / "absent.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth cannot be read: ") as error:
        load_pretrained(_model(1), tmp_path / "garbage.pth")
    assert "\n" not in str(error.value)


def test_model_entries_are_parsed(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    mapping = parse_pretrained([str(a), f"sam_med3d_turbo={b}"])
    assert mapping == {None: a, "sam_med3d_turbo": b}
    assert pretrained_for("sam_med3d_turbo", mapping) == b  # its own entry overrides the bare path
    assert pretrained_for("unet3d_xs", mapping) == a
    assert pretrained_for("unet3d_xs", parse_pretrained([f"sam_med3d_turbo={b}"])) is None
    assert parse_pretrained(str(a)) == {None: a} and parse_pretrained(None) == {}
    check_pretrained_models(mapping, ["unet3d_xs", "sam_med3d_turbo"])
    with pytest.raises(ValueError, match=r"'vista3d' not in --models"):
        check_pretrained_models(parse_pretrained([f"vista3d={a}"]), ["unet3d_xs"])
    with pytest.raises(ValueError, match="two entries for model 'm'"):
        parse_pretrained([f"m={a}", f"m={b}"])
    with pytest.raises(ValueError, match="two entries for every model"):
        parse_pretrained([str(a), str(b)])
    with pytest.raises(ValueError, match="missing.pth does not exist"):
        parse_pretrained([f"m={tmp_path / 'missing.pth'}"])


def _tiny_unet_file(tmp_path: Path) -> Path:
    from models import create_model

    path = tmp_path / "unet.pth"
    torch.save(create_model("unet3d_xs", in_channels=1, out_channels=2).state_dict(), path)
    return path


def test_the_flag_takes_model_entries_and_is_recorded_as_typed(tmp_path: Path) -> None:
    path = _tiny_unet_file(tmp_path)
    entry = f"unet3d_xs={path}"
    config = parse_config(["--models", "unet3d_xs", "--use_pretrained", "--pretrained_checkpoint", entry])
    assert config.pretrained_checkpoint == [entry] and not config.allow_pickle_checkpoint
    record = json.loads(json.dumps(config.to_dict()))  # as written to config.json
    assert record["pretrained_checkpoint"] == [entry]
    assert not resume_differences(dict(record, pretrained_checkpoint=str(path)),  # an older, single-path record
                                  dict(record, pretrained_checkpoint=[str(path)]))
    assert resume_differences(record, dict(record, pretrained_checkpoint=[str(path)]))
    zero_shot = parse_config(["--models", "unet3d_xs", "unet3d_s", "--epochs", "0", "--use_pretrained",
                              "--pretrained_checkpoint", str(path), entry])  # a bare path covers unet3d_s
    assert zero_shot.epochs == 0


@pytest.mark.parametrize("argv, needle", [
    (["--models", "unet3d_xs", "--use_pretrained", "--pretrained_checkpoint", "vista3d={file}"],
     "'vista3d' not in --models"),
    (["--use_pretrained", "--pretrained_checkpoint", "unet3d_xs={file}", "unet3d_xs={file}"], "two entries"),
    (["--use_pretrained", "--pretrained_checkpoint", "unet3d_xs={missing}"], "does not exist"),
    (["--pretrained_checkpoint", "{file}"], "only used with --use_pretrained"),
    (["--allow_pickle_checkpoint"], "--allow_pickle_checkpoint is only used with"),
    (["--epochs", "0"], "--epochs must be >= 1, or 0 (zero-shot)"),
    (["--epochs", "0", "--models", "unet3d_xs", "unet3d_s", "--use_pretrained", "--pretrained_checkpoint",
      "unet3d_xs={file}"], "none for unet3d_s"),
])
def test_flag_errors_are_one_line(argv: list[str], needle: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    path = _tiny_unet_file(tmp_path)
    argv = [a.format(file=path, missing=tmp_path / "missing.pth") for a in argv]
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and needle in err, err


def test_the_runner_loads_a_registry_model(tmp_path: Path) -> None:
    from experiment_runner import _load_pretrained
    from models import create_model

    path = _tiny_unet_file(tmp_path)
    source = torch.load(path, weights_only=True)
    torch.manual_seed(5)
    model = create_model("unet3d_xs", in_channels=1, out_channels=2)
    mapping = parse_pretrained([f"unet3d_xs={path}"])
    report = _load_pretrained(model, pretrained_for("unet3d_xs", mapping))  # type: ignore[arg-type]
    assert report.loaded == len(source) and not report.unexpected
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())
