import json

import pytest

from xbench.cli import main, parse_params
from xbench.errors import ParameterError


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def test_run_then_leaderboard(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--method", "rollout", "--model", "tiny-random-llava", "--limit", "3", "--out", str(out), "--no-progress", "--warmup", "0"]) == 0
    assert "3 samples explained, 0 errors" in capsys.readouterr().out
    assert main(["leaderboard", str(out)]) == 0
    assert "| rollout" in capsys.readouterr().out
    assert main(["leaderboard", str(out), "--format", "csv", "--output", str(tmp_path / "lb.csv")]) == 0
    assert (tmp_path / "lb.csv").read_text().startswith("task,model,method,runs")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--method", "rolout"], "unknown method 'rolout'. Did you mean 'rollout'?"),
        (["run", "--method", "rollout", "--task", "easyvq"], "unknown task 'easyvq'. Did you mean 'easyvqa'?"),
        (["run", "--method", "rollout", "--model", "tiny-random-lama"], "Did you mean 'tiny-random-llava'?"),
        (["run", "--method", "rollout", "--model", "/no/such/dir"], "model directory '/no/such/dir' does not exist"),
        (["run", "--method", "rollout", "--param", "residual"], "--param expects key=value"),
        (["run", "--method", "rollout", "--param", "steps=3"], "method 'rollout' has no parameter(s) ['steps']"),
        (["run", "--method", "rollout", "--split", "val"], "task 'easyvqa' has no split 'val'"),
        (["leaderboard", "/no/such/results"], "no run summaries found"),
    ],
)
def test_user_errors_are_one_clear_line(argv, message, capsys):
    assert main(argv + (["--no-progress"] if argv[0] == "run" else [])) == 2
    line = _err_line(capsys)
    assert line.startswith("xbench: error: ") and message in line


def test_argparse_rejects_bad_numbers(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--method", "rollout", "--limit", "0"])
    assert exc.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err


def test_plugins_lists_every_kind(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for word in ("method", "task", "metric", "model", "model family", "rollout", "easyvqa", "tiny-random-llava"):
        assert word in out


def test_parse_params_types():
    assert parse_params(["a=3", "b=0.5", "c=first", "d=true", "e=[1,2]"], "--param") == {
        "a": 3, "b": 0.5, "c": "first", "d": True, "e": [1, 2],
    }
    with pytest.raises(ParameterError):
        parse_params(["=3"], "--param")


def test_param_recorded_in_summary(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--method", "rollout", "--param", "token=first", "--model", "tiny-random-llava", "--limit", "2",
                 "--out", str(out), "--no-progress", "--warmup", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"]["params"]["token"] == "first" and summary["method"]["label"] == "rollout token=first"


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["run", "--help"], ["sweep", "--help"], ["leaderboard", "--help"], ["run", "--method", "rollout", "--limit", "0"],
     ["run"], ["rnu"]],
    ids=["help", "run-help", "sweep-help", "leaderboard-help", "run-bad-limit", "run-no-method", "unknown-command"],
)
def test_help_and_argparse_errors_start_without_importing_torch(argv):
    """Parsing alone must not import torch (it costs seconds): only the chosen command's options are built."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom xbench.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print('TORCH-IMPORTED' if 'torch' in sys.modules else 'no torch', code, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"no torch {0 if '--help' in argv else 2}", done.stderr
    if "--help" in argv:
        assert "usage: xbench" in done.stdout


def test_each_command_still_gets_its_options_when_chosen(capsys):
    from xbench.cli import COMMANDS, build_parser

    full = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit):
            build_parser(only={name}).parse_args([name, "--help"])
        alone = capsys.readouterr().out
        with pytest.raises(SystemExit):
            full.parse_args([name, "--help"])
        assert alone == capsys.readouterr().out, name
