"""The README's two quick-start commands: CI runs the test command verbatim, and the main job works."""

import re
from pathlib import Path

from lmforge.cli.main import main
from lmforge.data.corpus import shakespeare

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_ci_runs_the_readme_test_command():
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert commands[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pytest" in commands[1]


def test_main_job_command_runs(tmp_path, capsys, monkeypatch):
    """The first command's ``lmforge ...`` part, a budgeted run, shrunk to a few seconds on a small
    text (one utilisation assumed instead of measuring the machine)."""
    job = _quick_start_commands()[0].split("&&")[-1].split()
    assert job[:2] == ["lmforge", "train"] and "--budget" in job
    job[job.index("--budget") + 1] = "4s"
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "play.txt").write_text(shakespeare("train")[0].text, encoding="utf-8")
    rc = main(
        job[1:]
        + [
            "--mfu",
            "0.3",
            "--out",
            str(tmp_path / "run"),
            "--data.source",
            str(tmp_path / "play.txt"),
            "--data.path",
            str(tmp_path / "data"),
            "--data.vocab_size",
            "300",
            "--train.eval_batches",
            "1",
            "--train.sample_tokens",
            "8",
            "--train.progress",
            "false",
        ]
    )
    assert rc == 0
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    out = capsys.readouterr().out
    assert "sample" in out and "time-optimal" in out and "held-out loss: achieved" in out
