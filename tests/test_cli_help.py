"""The two CLIs' help, errors and --list_models: every flag names its default, flags are grouped, errors are
one line without the usage, and --list_models prints the registry."""

from __future__ import annotations

import argparse
import re

import pytest

import evaluate_experiment
import integrated_experiment
from engine.options.config import build_parser
from models import list_models, model_info



def _subcommand(name: str) -> argparse.ArgumentParser:
    return evaluate_experiment.subcommand_parsers(evaluate_experiment.build_parser())[name]


PARSERS = {"integrated_experiment": build_parser, "evaluate_experiment": evaluate_experiment.build_flag_only_parser,
           **{f"evaluate_experiment {name}": (lambda name=name: _subcommand(name))
              for name in evaluate_experiment.COMMANDS}}
LONG_HELP = ("integrated_experiment", "evaluate_experiment", "evaluate_experiment checkpoints")  # long file patterns
MAINS = {"integrated_experiment": integrated_experiment.main, "evaluate_experiment": evaluate_experiment.main}


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def _name(action: argparse.Action) -> str:
    return action.option_strings[0] if action.option_strings else action.dest


def _expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return " ".join(parser._get_formatter()._expand_help(action).split())


def _default_words(default: object) -> list[str]:
    """The words a help text must contain for this default (None/False/suppressed: none)."""
    if default is None or default is False or default == argparse.SUPPRESS:
        return []
    if isinstance(default, (list, tuple)):
        return [str(v) for v in default]
    if isinstance(default, dict):
        return [] if not default else [str(default)]
    return [str(default)]


@pytest.mark.parametrize("cli", PARSERS)
def test_every_flag_states_its_default(cli: str) -> None:
    parser = PARSERS[cli]()
    for action in _flags(parser):
        text = _expanded_help(parser, action)
        flag = _name(action)
        assert re.search(r"\bdefault\b", text), (flag, text)
        assert not re.search(r"default: (None|False|\[\]|\{\})\b", text), (flag, text)
        assert text.count("(default") <= 1, (flag, text)  # no second, generated default
        for word in _default_words(action.default):
            assert word in text, (flag, word, text)


@pytest.mark.parametrize("cli", LONG_HELP)
def test_help_never_breaks_a_word(cli: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "64")
    text = PARSERS[cli]().format_help()
    assert "integrated_experiment_results_YYYYMMDD_HHMMSS" in text or "evaluation_YYYYMMDD_HHMMSS" in text
    words = set(re.findall(r"[\w./$~{}\[\]-]+", " ".join(a.help or "" for a in PARSERS[cli]()._actions)))
    long_words = [w for w in words if len(w) > 20 and "%" not in w]
    assert long_words and all(w in text for w in long_words), [w for w in long_words if w not in text]


def test_sweep_flags_are_grouped_for_a_newcomer() -> None:
    parser = build_parser()
    groups = {g.title: {a.dest for a in g._group_actions} for g in parser._action_groups}
    expected = {
        "data": {"data_path", "dataset_version", "synthetic_size", "use_5fold", "splits_file", "num_workers"},
        "models": {"models", "list_models", "dim", "model_kwargs", "use_pretrained", "tiny"},
        "training": {"seeds", "epochs", "batch_size", "lr", "optimizer", "scheduler", "use_nnunet_loss",
                     "use_standard_loss", "patch_size", "no_amp", "deterministic"},
        "evaluation": {"val_overlap", "val_every"},
        "efficiency": {"skip_efficiency", "pam_runs", "latency_runs"},
        "output": {"output_dir", "resume", "keep_latest"},
    }
    for title, dests in expected.items():
        assert dests <= groups[title], (title, dests - groups[title])
    assert groups["options"] == {"help"}  # nothing left ungrouped


def _one_line_error(capsys: pytest.CaptureFixture, main: object, argv: list[str], needle: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert needle in err, (needle, err)


@pytest.mark.parametrize("argv, needle", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--epochs", "x"], "invalid int value: 'x'"),
    (["--optimizer", "lion"], "invalid choice: 'lion'"),
    (["--no_such_flag"], "--no_such_flag"),
    (["--val_overlap", "1.5"], "--val_overlap"),
    (["--model_kwargs", "{"], "not valid JSON"),
])
def test_sweep_errors_are_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    _one_line_error(capsys, integrated_experiment.main, argv, needle)


def test_evaluation_errors_are_one_line(capsys: pytest.CaptureFixture) -> None:
    _one_line_error(capsys, evaluate_experiment.main, [], "--results_dir")
    _one_line_error(capsys, evaluate_experiment.main, ["--results_dir", "x", "--split", "train"], "invalid choice")
    _one_line_error(capsys, evaluate_experiment.main, ["checkpoints", "--split", "val"], "--results_dir --checkpoint")
    _one_line_error(capsys, evaluate_experiment.main, ["folders", "--pred_dir", "p", "--label_dir", "l"],
                    "--output_csv")
    _one_line_error(capsys, evaluate_experiment.main, ["boxes", "--boxes_json", "b", "--output_json", "o", "--tta"],
                    "unrecognized arguments: --tta")
    _one_line_error(capsys, evaluate_experiment.main, ["compare", "--output_dir", "o"], "DIR")


@pytest.mark.parametrize("cli", MAINS)
def test_list_models_prints_the_registry_and_exits(cli: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        MAINS[cli](["--list_models", "unet3d_*"])  # evaluate_experiment needs no source with it
    assert exc.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    names = list_models("unet3d_*")
    assert lines[0].split() == ["name", "task", "params", "modalities"]
    assert [line.split()[0] for line in lines[1:-1]] == names
    for name, line in zip(names, lines[1:-1]):
        info = model_info(name)
        _, task, params, modalities = line.split(maxsplit=3)
        assert task == info.task and params == f"{info.num_params / 1e6:.2f}M"
        assert ",".join(info.modalities) in modalities and ("any" in modalities) == info.any_channels
    assert lines[-1].startswith(f"{len(names)} model")


def test_list_models_without_pattern_lists_all_and_unknown_pattern_fails(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        integrated_experiment.main(["--list_models"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(list_models()) + 2
    assert "input-dependent" in next(line for line in out if line.startswith("unetr "))
    _one_line_error(capsys, integrated_experiment.main, ["--list_models", "zz_*"], "'zz_*' matches no")


def _groups(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    return {g.title: {a.dest for a in g._group_actions} for g in parser._action_groups}


def test_evaluation_flags_are_grouped() -> None:
    groups = _groups(evaluate_experiment.build_flag_only_parser())
    assert {"results_dir", "checkpoint", "pred_dir", "aggregate"} <= groups["what to evaluate (exactly one)"]
    assert {"data_path", "split", "image_dir", "label_dir"} <= groups["data"]
    assert {"models", "list_models"} <= groups["models"]
    assert {"tta", "device", "no_amp"} <= groups["evaluation"]
    assert {"output_dir", "save_predictions", "visualize_cases", "gradcam_layer"} <= groups["output"]
    assert groups["options"] == {"help"}
    checkpoints = _groups(_subcommand("checkpoints"))
    assert checkpoints["what to evaluate (exactly one)"] == {"results_dir", "checkpoint"}
    assert {"data_path", "split", "image_dir", "label_dir"} <= checkpoints["data"]
    assert checkpoints["models"] == {"models", "list_models"} and checkpoints["evaluation"] == {"tta", "device",
                                                                                                "no_amp"}
    assert {"output_dir", "save_predictions", "visualize_cases", "gradcam_layer"} <= checkpoints["output"]
    for name in evaluate_experiment.COMMANDS:
        assert _groups(_subcommand(name))["options"] == {"help"}, name  # nothing left ungrouped
