"""What jaxtar writes, as a newcomer meets it (issue 25): progress in a log file, file modes that follow the umask,
plots that can be read on their own, and the README's demo numbers equal to the committed demo results.

The quick demo's own outputs (warning first, retain loss, the PyTorch note, the drift snapshot) are checked in
tests/test_demo.py, on its one quick run."""

from __future__ import annotations

import io
import json
import os
import re
import runpy
import stat
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from jaxtar import files
from jaxtar.defenses import _run_log
from jaxtar.eval import RedTeamResults, Scores
from jaxtar.eval import redteam as redteam_module
from jaxtar.eval.report import (
    ACCURACY_BARS,
    AttackRun,
    accuracy_figure,
    attack_loss_figure,
    moving_average_window,
    plot_attack_losses,
    plot_forget_accuracy,
    switch_steps,
)

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^tar: \d+/1000 steps \(\d+ %\) \| \d+:\d\d elapsed")


# ------------------------------------------------------------------------------------------ 1. progress in a log
def test_progress_into_a_file_is_plain_lines_without_carriage_returns():
    stream = io.StringIO()  # not a terminal: like `jaxtar demo > log 2>&1`
    with files.progress_bar(1000, desc="tar", file=stream) as bar:
        assert isinstance(bar, files.PlainProgress)
        for step in range(1000):
            bar.set_postfix({"loss": f"{1 / (step + 1):.3f}"}, refresh=False)
            bar.update(1)
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 11, lines  # a fast loop: the last line (plus at most one per 10 %)
    assert lines[-1].startswith("tar: 1000/1000 steps (100 %) | ") and lines[-1].endswith("loss=0.001")
    assert all(LINE.match(line) for line in lines), lines

    # every 10 % when time allows: exactly ten lines, with rate and ETA, none longer than a terminal line or two
    stream = io.StringIO()
    with files.PlainProgress(1000, desc="tar", file=stream, min_interval=0) as bar:
        for _ in range(1000):
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert [int(line.split()[1].split("/")[0]) for line in lines] == list(range(100, 1001, 100))
    assert "ETA" in lines[0] and "step/s" in lines[0] and "ETA" not in lines[-1]
    assert max(len(line) for line in lines) < 120 and "\r" not in stream.getvalue()


def test_a_slow_loop_prints_a_line_every_minute_at_most(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(files.time, "monotonic", lambda: now[0])
    stream = io.StringIO()
    with files.PlainProgress(100, desc="tar", file=stream, initial=10) as bar:  # resumed at step 10
        for _ in range(90):
            now[0] += 7.0  # 7 s per step: 630 s in all
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 630 / 60 + 2, lines
    assert lines[0].startswith("tar: 19/100 steps (19 %) | 1:03 elapsed, 7 s/step, ETA 9:27")
    assert lines[-1].startswith("tar: 100/100 steps (100 %) | 10:30 elapsed, 7 s/step")


def test_both_loops_use_the_one_progress_helper(capsys):
    assert redteam_module.progress_bar is files.progress_bar  # the red team's attacks
    bar = _run_log.progress_bar(5, 2, True, "tar")  # the defence loop; pytest's stderr is not a terminal
    assert isinstance(bar, files.PlainProgress) and (bar.n, bar.total) == (2, 5)
    bar.update(3)
    bar.close()
    assert capsys.readouterr().err.startswith("tar: 5/5 steps (100 %) | ")
    quiet = _run_log.progress_bar(5, 0, False, "tar")  # disabled: a silent tqdm
    quiet.update(5)
    quiet.close()
    assert capsys.readouterr() == ("", "")


# ------------------------------------------------------------------------------------------------ 2. file modes
def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    from jaxtar.models import LlamaConfig, create_model, save_pretrained

    model, params = create_model(LlamaConfig.tiny(num_layers=1), seed=0)
    old = os.umask(umask)
    try:
        assert files.default_file_mode() == mode
        single = save_pretrained(model, params, tmp_path / "model")
        sharded = save_pretrained(model, params, tmp_path / "sharded", max_shard_bytes=100_000)
        text = files.write_text_atomic(tmp_path / "a.md", "x")
        as_json = files.write_json_atomic(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert _modes(single) == {"config.json": mode, "model.safetensors": mode}
    assert len(_modes(sharded)) >= 4 and set(_modes(sharded).values()) == {mode}, _modes(sharded)
    assert stat.S_IMODE(text.stat().st_mode) == stat.S_IMODE(as_json.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


# ------------------------------------------------------------------------------------------------------ 3. plots
def _scores(forget: float, retain: float, loss: float = 1.0) -> Scores:
    return Scores(forget, 0.03, 40, retain, 0.02, 40, loss, loss / 2)


def _hand_made_results() -> RedTeamResults:
    """Two models x (a 10-step forget attack, a 10-step retain->forget attack switching at step 4, a 60-step
    attack), two seeds each."""
    specs = {
        "adamw": dict(optimizer="adamw", lr=1e-3, steps=10, data="forget"),
        "r2f": dict(optimizer="adamw", lr=1e-3, steps=10, data="retain_to_forget", switch_step=4),
        "long": dict(optimizer="sgd_nesterov", lr=3e-2, steps=60, data="forget"),
    }
    before = {"base": _scores(1.0, 0.95), "tar": _scores(0.25, 0.9, 3.0)}
    after = {"base": (0.95, 0.85), "tar": (0.5, 0.7)}
    runs = []
    for model in before:
        for adv, spec in specs.items():
            for seed in (0, 1):
                losses = tuple(np.linspace(3.0, 0.5 + seed, spec["steps"]).tolist())
                forget, retain = after[model]
                scores = _scores(forget + 0.05 * seed * (adv == "long"), retain - 0.1 * (adv == "r2f"))
                switch = 4 if adv == "r2f" else None
                runs.append(AttackRun(model, adv, seed, spec, before[model], scores, losses, switch))
    return RedTeamResults(before, tuple(runs), 0.25)


def test_attack_loss_plot_has_one_legend_titles_and_the_switch_point(tmp_path):
    results = _hand_made_results()
    assert switch_steps(results, "r2f") == [4] and switch_steps(results, "adamw") == []
    assert (moving_average_window(10), moving_average_window(60)) == (1, 2)
    fig = attack_loss_figure(results)
    try:
        panels = fig.axes[:3]
        assert [ax.get_title().split("\n")[0] for ax in panels] == ["adamw", "r2f", "long"]
        assert "retain->forget" in panels[1].get_title() and "60 steps" in panels[2].get_title()
        vertical = [line.get_xdata()[0] for ax in panels for line in ax.lines if len(set(line.get_xdata())) == 1]
        assert vertical == [4.5]  # only on the switching attack: between step 4 (retain) and 5 (forget)
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + fig.legends
        assert len(legends) == 1  # one legend for every panel
        labels = [t.get_text() for t in legends[0].get_texts()]
        assert labels[:2] == ["base", "tar"]
        assert "moving average over 2 steps (attacks of 50+ steps)" in labels
        assert any("per-step loss" in t for t in labels) and any("retain->forget switch" in t for t in labels)
        assert "seed min..max" in labels
        # the long attack: a faint per-step line and a solid moving average per model
        assert sorted(line.get_alpha() or 1.0 for line in panels[2].lines) == [0.35, 0.35, 1.0, 1.0]
    finally:
        plt.close(fig)
    path = plot_attack_losses(results, tmp_path / "attack_loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_summary_chart_shows_retain_accuracy_beside_forget_accuracy(tmp_path):
    results = _hand_made_results()
    fig = accuracy_figure(results)
    try:
        forget_ax, retain_ax = fig.axes
        assert "forget" in forget_ax.get_title() and "retain" in retain_ax.get_title()

        def heights(ax):
            return [p.get_height() for p in ax.patches]

        # per bar group (before, mean after, worst case), one bar per model (base, tar); the long attack's second
        # seed is 5 points higher (seed mean +2.5), the retain->forget attack costs 10 points of retain
        mean_forget = [(95 + 95 + 97.5) / 3, (50 + 50 + 52.5) / 3]
        assert heights(forget_ax) == pytest.approx([100, 25, *mean_forget, 97.5, 52.5])
        assert heights(retain_ax) == pytest.approx([95, 90, (85 + 75 + 85) / 3, (70 + 60 + 70) / 3, 75, 60])
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert labels[0] == "chance" and labels[1:3] == list(ACCURACY_BARS[:2]) and "retain: lowest" in labels[3]
        assert all(ax.lines[0].get_ydata()[0] == 25.0 for ax in fig.axes)  # chance on both panels
    finally:
        plt.close(fig)
    path = plot_forget_accuracy(results, tmp_path / "forget_accuracy.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


# ---------------------------------------------------------------------------------------- 4. published numbers
def test_readme_demo_block_is_rendered_from_the_committed_demo_results(tmp_path, monkeypatch, capsys):
    from jaxtar.demo import README_END, README_START, demo_table, with_readme_results

    readme = (ROOT / "README.md").read_text()
    meta = json.loads((ROOT / "docs" / "results" / "demo.json").read_text())
    assert meta["quick"] is False and readme.count(README_START) == readme.count(README_END) == 1
    assert with_readme_results(readme, meta) == readme, "the README's demo block is stale: run `make results`"
    results = RedTeamResults.from_dict(meta["results"])
    block = readme.split(README_START)[1].split(README_END)[0]
    assert demo_table(results) in block and meta["verdict"] in block
    tar = meta["numbers"]["tar"]
    assert f"| tar | {100 * tar['forget_before']:.1f} ± " in block and f"{tar['retain_loss_before']:.2f} →" in block

    # the script's check agrees, and flags a hand-edited number
    script = runpy.run_path(str(ROOT / "scripts" / "update_results.py"))
    assert script["main"](["--check"]) == 0
    edited = tmp_path / "README.md"
    edited.write_text(readme.replace(f"**{100 * tar['worst_forget_after']:.1f}**", "**12.3**", 1))
    assert script["main"](["--check", "--readme", str(edited)]) == 1
    assert "stale" in capsys.readouterr().err
    assert script["main"](["--readme", str(edited)]) == 0 and edited.read_text() == readme  # and mends it


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_default_file_mode_matches_the_umask():
    old = os.umask(0o077)
    try:
        assert files.default_file_mode() == 0o600
    finally:
        os.umask(old)
