"""The benchmark harness runs on the tiniest shapes and its outputs agree (no timing assertions)."""

import json

import pytest

from lmforge.bench.harness import interleave
from lmforge.cli.main import main


def test_interleave_alternates():
    order = []
    t_a, t_b = interleave(lambda: order.append("a"), lambda: order.append("b"), rounds=3, warmup=1)
    assert order == ["a", "b"] * 4 and len(t_a) == len(t_b) == 3


def test_smoke_run_writes_a_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--smoke", "--device", "cpu", "--cases", "train-tiny,generate,score,fit", "--json", str(out)])
    assert rc in (0, None)
    report = json.loads(out.read_text())
    assert {"torch", "transformers", "torch_threads", "cpus"} <= set(report["system"])
    checks = {r["name"]: r["check"] for r in report["results"]}
    assert checks["train smoke (1x32, T16, B2)"] == "|dloss| 0.0e+00"
    assert all(c == "identical tokens" for n, c in checks.items() if n.startswith("generate"))
    assert float(checks["score 4x32"].split()[-1]) <= 1e-4
    floors = {r["name"]: r for r in report["results"] if r["name"].startswith("decode step vs matmul floor")}
    assert sorted(floors) == ["decode step vs matmul floor, batch 1", "decode step vs matmul floor, batch 8"]
    for r in floors.values():  # the floor's time and the step's, as measured (no timing assertion)
        assert r["notes"]["floor_s"] > 0 and r["notes"]["step_s"] > 0
        assert r["ratio"] == pytest.approx(r["notes"]["floor_s"] / r["notes"]["step_s"])
    assert "ratio" in capsys.readouterr().out


def test_smoke_int8_cases_report_against_fp32(tmp_path, capsys):
    """--int8 adds int8-vs-fp32 rows to generate and score (no timing assertions); refused off the CPU / fp32."""
    import pytest

    from lmforge.bench.cases import check_int8
    from lmforge.errors import ConfigError

    out = tmp_path / "bench.json"
    rc = main(["bench", "--smoke", "--device", "cpu", "--cases", "generate,score", "--int8", "--json", str(out)])
    assert rc in (0, None)
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    names = [n for n in results if "int8" in n]
    assert names == [
        "generate greedy int8 vs fp32, batch 1",
        "generate greedy int8 (fp32 head) vs fp32, batch 1",
        "generate greedy int8 vs fp32, batch 8",
        "score int8 vs fp32 4x32",
    ]
    assert all(results[n]["notes"]["reference"] == "lmforge fp32" and results[n]["ratio"] for n in names)
    assert results[names[0]]["check"].endswith("of tokens equal fp32")
    assert float(results[names[-1]]["check"].split()[2].rstrip(",")) < 0.05
    capsys.readouterr()
    import torch

    with pytest.raises(ConfigError, match="--int8"):
        check_int8(torch.device("cpu"), torch.bfloat16)
    assert main(["bench", "--smoke", "--dtype", "int8", "--cases", "generate"]) == 2
    assert "--int8" in capsys.readouterr().err


def test_select_cases_defaults_by_device_and_refuses_unknown_names():
    from types import SimpleNamespace

    import pytest

    from lmforge.bench.cases import CASES, GPU_ONLY, select_cases
    from lmforge.errors import ConfigError

    cpu, cuda = SimpleNamespace(type="cpu"), SimpleNamespace(type="cuda")
    assert select_cases(None, cuda) == list(CASES)
    assert not set(GPU_ONLY) & set(select_cases(None, cpu))
    assert select_cases(" score, fit ,", cpu) == ["score", "fit"]
    with pytest.raises(ConfigError, match="unknown case 'nope'"):
        select_cases("score,nope", cpu)
