"""The dotsim CLI: help with examples, one-line user errors with exit 2, prepare."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli, main

COMMANDS = ["prepare", "train", "sweep", "report", "submit", "job", "job status", "job logs",
            "job stop", "cluster", "cluster validate", "cluster up", "cluster down",
            "cluster status", "cluster dashboard", "cluster watch-spot", "version"]


def _invoke_main(args, capsys):
    with pytest.raises(SystemExit) as done:
        main(args)
    out, err = capsys.readouterr()
    return done.value.code, out, err


def _all_commands(group, prefix=()):
    for name, command in group.commands.items():
        yield " ".join((*prefix, name))
        if hasattr(command, "commands"):
            yield from _all_commands(command, (*prefix, name))


def test_the_list_below_is_every_command():
    assert sorted(_all_commands(cli)) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(cli, [*command.split(), "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and f"dotsim {command}" in result.output


@pytest.mark.parametrize("argv", [[], ["job"], ["cluster"]])
def test_a_bare_group_prints_its_help(argv, capsys):
    code, out, err = _invoke_main(argv, capsys)
    assert code == 0 and "Commands:" in out and "Example:" in out and err == ""


def test_group_help_lists_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in {c.split()[0] for c in COMMANDS}:
        assert command in result.output


def test_options_with_a_fixed_set_of_values_list_them():
    text = CliRunner().invoke(cli, ["train", "--help"]).output
    for values in ("[tiny|small|base|large]", "[minmax|meanstd]", "[local|global]",
                   "[standard|fskil]", "[skip|stop]", "[normalised|reference]"):
        assert values in text


def test_report_loads_neither_torch_nor_ray_train(tmp_path):
    """`dotsim report` is pandas and matplotlib work; torch and Ray Train take seconds and
    memory to import, and a report machine may not have them working."""
    from handmade import trial_rows, write_sweep

    write_sweep(tmp_path, [*trial_rows("cosine", 0, 0.5), *trial_rows("dot:minmax:global",
                                                                       0, 0.6)])
    code = ("import sys\nfrom orchestrator.cli import main\ncode = 0\ntry:\n main(['report', "
            "sys.argv[1]])\nexcept SystemExit as e:\n code = e.code\nprint('exit', code)\n"
            "print(sorted(m for m in ('torch', 'ray.train', 'ray.tune', 'torchaudio') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True)
    assert done.stdout.splitlines()[-2:] == ["exit 0", "[]"], done.stderr[-2000:]
    assert (tmp_path / "comparison.png").is_file()


def test_version():
    result = CliRunner().invoke(cli, ["version"])
    assert result.exit_code == 0
    assert "torch 2.11.0" in result.output and "ray 2.60.0" in result.output


def test_train_help_shows_config_defaults_and_address_env():
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert "[default: global]" in result.output
    assert "RAY_ADDRESS" in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--norm", "zscore"], "unknown norm 'zscore'; allowed: minmax, meanstd"),
        (["train", "--similarity", "dott"], "allowed: cosine, dot, dot-legacy"),
        (["train", "--scope", "world"], "allowed: local, global"),
        (["train", "--batch-size", "0"], "batch_size must be > 0"),
        (["train", "--batch-size", "-4"], "batch_size must be > 0"),
        (["train", "--batch-size", "24", "--workers", "4"], "do not split evenly over 4"),
        (["train", "--batch-size", "abc"], "Invalid value for '--batch-size'"),
        (["train", "--gpu"], "no CUDA GPU"),
        (["train", "--data", "/nonexistent/folder"], "is not a prepared data folder"),
        (["prepare", "/nonexistent/source", "--out", "{tmp}/out"], "is not a folder"),
        (["prepare"], "Missing option '--out'"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, message, capsys, tmp_path):
    code, out, err = _invoke_main([a.format(tmp=tmp_path) for a in args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err


def test_the_resume_command_repeats_the_options_given_on_the_command_line(monkeypatch):
    """What `dotsim train` prints on Ctrl-C: the options typed (--address among them), not
    those from the environment (the next shell has them too), and the run's name."""
    from orchestrator.cli import _resume_command

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    train = cli.commands["train"]
    typed = train.make_context("train", ["--address", "10.0.0.5:6379", "--lr", "0.01",
                                         "--json", "--run-name", "old"])
    assert _resume_command(typed, "r1") == (
        "dotsim train --lr 0.01 --address 10.0.0.5:6379 --json --run-name r1")
    from_env = train.make_context("train", ["--epochs", "3"])
    assert _resume_command(from_env, "r2") == "dotsim train --epochs 3 --run-name r2"


def test_console_script_user_error_has_no_traceback():
    proc = subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()",
                           "train", "--norm", "bad"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "dotsim: error: unknown norm 'bad'; allowed: minmax, meanstd"]


def test_prepare_speech_commands_folder_json(tmp_path, speech_commands):
    root = speech_commands
    result = CliRunner().invoke(cli, ["prepare", str(root), "--out", str(tmp_path / "p"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"train": 70, "validation": 35, "test": 35}
    assert (tmp_path / "p" / "meta.json").is_file()
    again = CliRunner().invoke(cli, ["prepare", str(root), "--out", str(tmp_path / "p")])
    assert again.exit_code == 2 and "already exists" in again.output
