"""``jaxtar bench`` on tiny settings: the table has every row, ratios are finite and positive, bad input exits 2."""

from __future__ import annotations

import json
import math

from jaxtar.cli import main

TINY = ["bench", "--k", "2", "--every", "1", "--layers", "1", "--hidden-size", "32", "--batch", "2", "--seq", "8",
        "--reps", "2"]  # fmt: skip


def _table(out: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}  # skip the header


def test_bench_prints_a_row_per_estimator_with_finite_ratios(capsys, tmp_path):
    out_json = tmp_path / "bench.json"
    assert main([*TINY, "--estimators", "tar", "first_order", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    table = _table(out)
    assert list(table) == ["plain", "tar", "first_order"]
    assert float(table["plain"][1]) == 1.0
    for name, (ms, ratio, compile_s) in table.items():
        assert float(ms) > 0 and float(compile_s) >= 0, name
        assert math.isfinite(float(ratio)) and float(ratio) > 0, name
    assert "1 layers d=32" in out and "K=2" in out
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["method"] for r in rows] == list(table)
    assert all(r["K"] == 2 and r["hidden_size"] == 32 and r["median_s"] > 0 for r in rows)


def test_bench_bad_input_exits_2_and_overwrites_nothing(capsys, tmp_path):
    assert main(["bench", "--k", "0"]) == 2
    assert "--k must be >= 1" in capsys.readouterr().err
    assert main(["bench", "--k", "2", "--every", "3"]) == 2
    assert "--every must be in [1, K=2]" in capsys.readouterr().err
    taken = tmp_path / "taken.json"
    taken.write_text("keep")
    assert main([*TINY, "--json", str(taken)]) == 2
    assert "already exists" in capsys.readouterr().err and taken.read_text() == "keep"
