"""``jaxtar defend``: both subcommands on the toy world, resume after ``kill -9`` and after SIGTERM.

A TAR run killed with SIGKILL mid-run (a subprocess, which loads the compiled step from the persistent compilation
cache of tests/conftest.py) and resumed must end with bit-identical parameters and metrics to an
uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import jaxtar.commands.defend  # noqa: F401 - registers `jaxtar defend`
from jaxtar.cli import main
from jaxtar.config import load_config
from jaxtar.defenses import run_random_mapping
from jaxtar.models import from_pretrained

RM_OVERRIDES = {
    "random_mapping.steps": 10, "random_mapping.forget_batch_size": 4, "random_mapping.retain_batch_size": 4,
    "random_mapping.lr": 3e-3, "random_mapping.warmup_steps": 2, "data.max_length": 24, "data.limit": 64,
    "run.progress": False, "run.checkpoint_every": 1,
}  # fmt: skip
_LAUNCH = "import sys, jaxtar.commands.defend; from jaxtar.cli import main; sys.exit(main(sys.argv[1:]))"


def _flags(overrides: dict) -> list[str]:
    """``{"tar.inner_steps": 4}`` -> ``["--tar.inner-steps", "4"]`` (lists and booleans as YAML)."""
    out = []
    for key, value in overrides.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out += [f"--{key.replace('_', '-')}", text]
    return out


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")  # with the session's compilation cache


def _defend(args, **kw):
    cmd = [sys.executable, "-c", _LAUNCH, "defend", *args]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _steps(folder):
    return sorted(int(p.name) for p in (folder / "checkpoints").glob("[0-9]*") if p.name.isdigit())


def test_tar_resumed_after_kill_9_equals_an_uninterrupted_run(tar_overrides, tmp_path, capsys):
    full, killed = tmp_path / "full", tmp_path / "killed"
    flags = ["tar", "--preset", "toy", *_flags({**tar_overrides, "tar.outer_steps": 6})]

    assert main(["defend", *flags, "--output", str(full)]) == 0
    printed = capsys.readouterr().out
    assert "model:" in printed and "needs PyTorch: pip install torch" in printed  # the export and how to load it
    assert (full / "model" / "model.safetensors").is_file()
    assert {"run.json", "config.yaml", "metrics.jsonl", "result.json"} <= {p.name for p in full.iterdir()}
    from_pretrained(full / "model")  # the export is a loadable HF checkpoint

    proc = _defend([*flags, "--output", str(killed), "--run.checkpoint-every", "1", "--run.keep-checkpoints", "3"])
    while proc.poll() is None and not [s for s in _steps(killed) if s >= 2]:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err[-2000:]}"
    assert not (killed / "model").exists() and 2 <= max(_steps(killed)) < 6

    assert main(["defend", *flags, "--output", str(killed), "--resume"]) == 0
    assert "resumed from step" in capsys.readouterr().err

    want, got = load_file(full / "model" / "model.safetensors"), load_file(killed / "model" / "model.safetensors")
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)  # bit-identical
    timing = ("step_time_s", "tokens_per_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
    assert strip(read_jsonl(killed / "metrics.jsonl")) == strip(read_jsonl(full / "metrics.jsonl"))
    assert [r["step"] for r in read_jsonl(full / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]

    # the same command again without --resume: refused, nothing touched
    before = (full / "run.json").read_text(), (full / "model" / "model.safetensors").stat().st_mtime_ns
    assert main(["defend", *flags, "--output", str(full)]) == 2
    assert "already holds this run" in capsys.readouterr().err
    assert ((full / "run.json").read_text(), (full / "model" / "model.safetensors").stat().st_mtime_ns) == before


def test_random_mapping_cli_then_sigterm_and_resume(toy_base_dir, tmp_path, capsys):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    flags = ["random-mapping", "--preset", "toy", "--model.path", str(toy_base_dir)]
    flags += _flags({**RM_OVERRIDES, "run.checkpoint_every": 1000})
    assert main(["defend", *flags, "--output", str(tmp_path / "full")]) == 0
    assert "model:" in capsys.readouterr().out
    rows = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert len(rows) == 10 and rows[-1]["random_mapping"] < rows[0]["random_mapping"] - 0.05  # it learns
    model, base = from_pretrained(toy_base_dir)
    _, exported = from_pretrained(tmp_path / "full" / "model")
    assert not np.allclose(exported["layers"]["q_proj"]["kernel"], base["layers"]["q_proj"]["kernel"])

    # SIGTERM mid-run: a checkpoint, interrupted=True; the resumed run ends where the uninterrupted one did
    overrides = {**RM_OVERRIDES, "model.path": str(toy_base_dir), "run.output_dir": str(tmp_path / "rm")}
    config = load_config("toy", overrides)
    got: list[int] = []
    safety = signal.signal(signal.SIGTERM, lambda *a: got.append(1))  # a late signal must not kill pytest

    def send_when_running():
        path = tmp_path / "rm" / "metrics.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and (not path.exists() or len(path.read_text().splitlines()) < 3):
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=send_when_running)
    thread.start()
    try:
        first = run_random_mapping(config)
    finally:
        thread.join()
        signal.signal(signal.SIGTERM, safety)
    assert first.interrupted and 3 <= first.steps < 10 and first.model_dir is None and not got
    resumed = run_random_mapping(load_config("toy", {**overrides, "run.resume": True}))
    assert resumed.steps == 10 and not resumed.interrupted
    _, final = from_pretrained(resumed.model_dir)
    for a, b in zip(_leaves(final), _leaves(exported), strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical


def _leaves(tree):

    return [np.asarray(x) for x in jax.tree.leaves(tree)]
