"""One TAR run across two processes (JAX's multi-controller runtime, gloo CPU collectives) equals the one-process run.

Two processes on localhost with 4 simulated CPU devices each form one mesh (data 2 x fsdp 2 x adversary 2); the same
2-step ``jaxtar defend tar --preset toy`` runs once that way and once in one process with 8 simulated devices. The
processes are started once per module (`runs`); the resumes of both run folders in one process run side by side.
Bad multi-process input exits 2 in bounded time and writes nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import jaxtar.commands.defend  # noqa: F401 - registers `jaxtar defend`
from jaxtar.cli import main
from jaxtar.config import load_config
from jaxtar.errors import ConfigError
from jaxtar.parallel import check_coordinator_address

_ROOT = Path(__file__).resolve().parents[2]
_LAUNCH = "import sys, jaxtar.commands.defend; from jaxtar.cli import main; sys.exit(main(sys.argv[1:]))"
# K = 2 inner steps, A = 2 adversaries (one per adversary shard), batches of 8 (split over data x fsdp = 4).
# tar.eps 1e-4: the first schedule-free Adam update is ~lr * g / (|g| + eps); with eps at 1e-8 it is ~lr * sign(g),
# so gradient entries at float32 noise level (the two runs sum in different orders: gloo vs in-process all-reduce)
# move by a full lr and step 2 then differs by ~3e-5 (measured); a larger eps keeps the comparison about the program.
_FLAGS = [
    "--preset", "toy", "--model.path", "toy", "--tar.outer-steps", "2", "--tar.inner-steps", "2",
    "--tar.adversaries-per-step", "2", "--tar.adversary-batch-size", "8", "--tar.tamper-batch-size", "8",
    "--tar.retain-batch-size", "8", "--tar.warmup-steps", "0", "--tar.eps", "1e-4", "--run.checkpoint-every", "1",
    "--run.progress", "false", "--run.tensorboard", "false",
]  # fmt: skip
_MESH = ["--run.mesh-data", "2", "--run.mesh-fsdp", "2", "--run.mesh-adversary", "2"]
_TIMEOUT = 600  # per process; a hang fails the test instead of stalling the suite
METRIC_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
# after the resume: both runs start their 3rd step from step-2 states that already differ at float32 noise (above)
# and the schedule-free update amplifies it (measured: metrics 8e-5 relative, weights 1.5e-5 absolute)
RESUME_RTOL = 3e-4
RESUME_ATOL = 5e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, mlir_emitters: bool = False) -> dict[str, str]:
    """The environment of a process on ``devices`` simulated devices, compiled with the suite's quick-compile flags
    (conftest.py); ``mlir_emitters`` keeps XLA's default fusion code generator instead of the older one those
    flags pick, whose float32 noise a TAR run's step 2 amplifies past 1e-5 (measured 2.2e-5 on grad_norm_tamper)."""
    quick = os.environ.get("XLA_FLAGS", "").split()
    if mlir_emitters:
        quick = [f for f in quick if not f.startswith("--xla_cpu_use_fusion_emitters")]
    flags = (
        f"{' '.join(quick)} --xla_force_host_platform_device_count={devices} "
        # on 2 busy cores a device thread can reach a collective minutes after the others: no 40 s abort
        "--xla_cpu_collective_call_terminate_timeout_seconds=900 --xla_cpu_collective_timeout_seconds=900"
    )
    path = str(_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", XLA_FLAGS=flags, PYTHONPATH=path)


def _start(args: list[str], devices: int) -> subprocess.Popen:
    """``jaxtar defend tar`` in a new process: the metrics of these runs are compared to 1e-5 (see `_env`)."""
    cmd = [sys.executable, "-c", _LAUNCH, "defend", "tar", *args]
    env = _env(devices, mlir_emitters=True)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _processes(n: int, args: list[str], devices: int, port: int | None = None) -> list[subprocess.Popen]:
    port = port or _free_port()
    mp = lambda i: ["--run.coordinator", f"localhost:{port}", "--run.num-processes", str(n), "--run.process-id", str(i)]  # noqa: E731
    return [_start([*args, *mp(i)], devices) for i in range(n)]


def _finish(procs: list[subprocess.Popen], timeout: float = _TIMEOUT) -> list[tuple[int, str, str]]:
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


def _ok(results: list[tuple[int, str, str]]) -> None:
    for i, (rc, _, err) in enumerate(results):
        assert rc == 0, f"process {i} exited {rc}:\n{err[-3000:]}"


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The 2-process and the 1-process (8 devices) run, side by side; then both folders resumed for a 3rd step in
    one process (8 devices), side by side. Returns folders, results and wall times."""
    root = tmp_path_factory.mktemp("multiprocess")
    two, one = root / "two", root / "one"
    t0 = time.perf_counter()
    procs = _processes(2, [*_FLAGS, *_MESH, "--output", str(two)], devices=4)
    procs.append(_start([*_FLAGS, *_MESH, "--output", str(one)], devices=8))
    first = _finish(procs)
    t1 = time.perf_counter()
    _ok(first)
    weights = {name: load_file(str(root / name / "model" / "model.safetensors")) for name in ("two", "one")}
    more = [*_FLAGS, *_MESH, "--tar.outer-steps", "3", "--resume"]
    second = _finish([_start([*more, "--output", str(two)], 8), _start([*more, "--output", str(one)], 8)])
    t2 = time.perf_counter()
    _ok(second)
    print(f"multi-process runs: {t1 - t0:.0f} s, resumes: {t2 - t1:.0f} s wall")
    return {"two": two, "one": one, "first": first, "second": second, "weights": weights}


def test_two_processes_equal_one_process(runs):
    """Two processes x 4 devices log the metrics of one process x 8 devices (relative 1e-5; measured <= 8e-7 at
    step 1 and <= 7.2e-6 at step 2) and export the same weights (absolute 1e-5; measured 5e-6). Process 0 alone writes
    the folder (one metrics line per step, not two). These runs compile with XLA's MLIR fusion emitters (`_start`)."""
    two, one = _metrics(runs["two"])[:2], _metrics(runs["one"])[:2]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2]
    for a, b in zip(two, one, strict=True):
        keys = [k for k, v in b.items() if isinstance(v, float) and k not in ("step_time_s", "tokens_per_s")]
        assert len(keys) >= 8, keys
        for k in keys:
            assert abs(a[k] - b[k]) <= METRIC_RTOL * max(abs(b[k]), 1e-6), (a["step"], k, a[k], b[k])
    wa, wb = runs["weights"]["two"], runs["weights"]["one"]  # the 2-step exports (read before the resumes)
    assert sorted(wa) == sorted(wb) and len(wa) >= 10
    assert max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wb) <= WEIGHT_ATOL
    assert "tar: 2 steps" in runs["first"][0][1] and "model:" in runs["first"][0][1]
    assert "wrote " in runs["first"][0][2] and "wrote " not in runs["first"][1][2]  # process 0 exported, 1 waited


def test_resume_in_one_process_and_weights(runs):
    """The 2-process run's checkpoint resumes in one process; its 3rd step and exported weights equal the
    1-process run resumed the same way (metrics relative 3e-4, weights absolute 5e-5: see RESUME_RTOL)."""
    a, b = _metrics(runs["two"]), _metrics(runs["one"])
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for k in ("loss", "tamper_loss", "retain_ce", "grad_norm_tamper", "grad_norm_retain", "attack_final"):
        assert abs(a[2][k] - b[2][k]) <= RESUME_RTOL * max(abs(b[2][k]), 1e-6), (k, a[2][k], b[2][k])
    assert "resumed from step 2" in runs["second"][0][2]
    wa = load_file(str(runs["two"] / "model" / "model.safetensors"))
    wb = load_file(str(runs["one"] / "model" / "model.safetensors"))
    assert sorted(wa) == sorted(wb) and len(wa) >= 10
    diff = max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wb)
    assert diff <= RESUME_ATOL, diff
    before = runs["weights"]["two"]
    assert max(float(np.max(np.abs(wa[k] - before[k]))) for k in wa) > 10 * RESUME_ATOL  # the 3rd step moved them
    assert json.loads((runs["two"] / "result.json").read_text())["steps"] == 3
    steps = sorted(int(p.name) for p in (runs["two"] / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 3]  # keep_checkpoints 2: the 2-process saves (1, 2) and the resumed 3


def test_kill_9_of_one_process_leaves_only_whole_checkpoints(runs, tmp_path):
    """``kill -9`` of process 1 of a 3-step 2-process run once its first checkpoint is whole (then of process 0, as a
    scheduler would stop the job): the folder holds only whole checkpoints (a step's folder is renamed into place
    once every process has written its part), and it resumes in one process from its last one to the weights of
    the uninterrupted run (`runs`: 2 steps, resumed for the 3rd; absolute 5e-5, as above)."""
    out = tmp_path / "killed"
    procs = _processes(2, [*_FLAGS, *_MESH, "--tar.outer-steps", "3", "--output", str(out)], devices=4)
    try:
        deadline = time.monotonic() + _TIMEOUT
        while not (out / "checkpoints" / "1").is_dir():
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no first checkpoint"
            time.sleep(0.05)
        procs[1].kill()
        try:
            procs[0].wait(timeout=10)
        except subprocess.TimeoutExpired:
            procs[0].kill()
    finally:
        killed = _finish(procs, timeout=60)
    assert killed[1][0] == -9 and not (out / "model").exists(), [r[0] for r in killed]
    whole = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert whole and set(whole) <= {1, 2}, whole
    resume = [*_FLAGS, *_MESH, "--tar.outer-steps", "3", "--resume", "--output", str(out)]
    ((rc, _, err),) = _finish([_start(resume, 8)])
    assert rc == 0, err[-3000:]
    assert f"resumed from step {whole[-1]}" in err
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3]
    resumed = load_file(str(out / "model" / "model.safetensors"))
    uninterrupted = load_file(str(runs["one"] / "model" / "model.safetensors"))
    diff = max(float(np.max(np.abs(resumed[k] - uninterrupted[k]))) for k in uninterrupted)
    print(f"killed ({[r[0] for r in killed]}) with checkpoints {whole}; resumed weights within {diff:.1e}")
    assert diff <= RESUME_ATOL, diff


def test_exact_meta_gradient_outer_step_across_two_processes_equals_one_process(tmp_path):
    """One TAR outer step with the exact second-order meta-gradient (K = 2, a record every step) on the data 2 x
    fsdp 2 x adversary 2 mesh (tests/parallel/exact_outer_step_job.py): two processes x 4 devices against one process
    x 8 devices. The losses agree to 1e-5 relative (measured: <= 8e-8), the meta-gradient's norm to 1e-4 (measured
    3e-5) and >= 99.5 % of the new weights to 1e-5 absolute (measured 99.75 %), the rest within the outer lr.

    Why not tighter: the attacker's first AdamW step is ~lr * g / (|g| + 1e-8), whose derivative eps / (|g| + eps)^2
    is up to 1e8 where a gradient entry is near zero, so the second-order term turns the float32 noise of the two
    runs' summation orders (gloo vs in-process all-reduce) into visible differences in those few entries, which the
    outer schedule-free Adam's first (~sign-like) step then moves by up to its lr.

    Each of the two processes tokenises only its half of the batch's rows and reads only its half of the forget
    texts for the held-out split (their content keys are gathered); the same holds for DPO's reference
    log-probs of 16 preference pairs, computed on the mesh, whose numbers agree to 1e-5."""
    job = str(Path(__file__).with_name("exact_outer_step_job.py"))
    port = _free_port()

    def start(out, devices, *mp):
        cmd = [sys.executable, job, str(out), *mp]
        return subprocess.Popen(cmd, env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    two, one = tmp_path / "two.npz", tmp_path / "one.npz"
    procs = [start(two, 4, f"localhost:{port}", "2", str(i)) for i in (0, 1)]
    procs.append(start(one, 8))
    _ok(_finish(procs))
    a, b = np.load(two), np.load(one)
    assert sorted(a.files) == sorted(b.files)
    metrics = [k for k in b.files if "metrics" in k and b[k].ndim == 0]
    weights = [k for k in b.files if "params" in k]
    assert len(metrics) >= 8 and len(weights) >= 10
    norm = "['metrics']/['grad_norm_tamper']"
    for k in metrics:
        rtol = 1e-4 if k == norm else METRIC_RTOL
        assert abs(float(a[k]) - float(b[k])) <= rtol * max(abs(float(b[k])), 1e-6), (k, a[k], b[k])
    assert float(b[norm]) > 1.0  # a (second-order) meta-gradient was taken
    diff = np.concatenate([np.ravel(np.abs(a[k] - b[k])) for k in weights])
    assert np.mean(diff <= WEIGHT_ATOL) >= 0.995 and diff.max() <= 1e-3, (np.mean(diff <= WEIGHT_ATOL), diff.max())
    # each process tokenised only the rows of its own shards: half of the batch (the data x fsdp halves of every
    # role's rows), and up front only one example per data table (to learn its columns)
    count = lambda out, i: json.loads(Path(f"{out}.tokenised.{i}.json").read_text())  # noqa: E731
    whole, halves = count(one, 0), [count(two, i) for i in (0, 1)]
    assert whole["at_start"] <= 6 and all(h["at_start"] == whole["at_start"] for h in halves), (whole, halves)
    assert whole["batch"] >= 24, whole  # 48 rows (32 adversary, 8 tamper, 8 retain); measured: 48, and 24 + 24
    for h in halves:
        assert 0.3 * whole["batch"] <= h["batch"] <= 0.6 * whole["batch"], (whole, halves)
    # the held-out split of the forget role (a tamper role): each process read and hashed its half of the texts
    assert whole["forget_read"] >= 744, whole  # the toy world's 744 forget texts
    for h in halves:
        assert h["forget_read"] <= 0.5 * whole["forget_read"] + 4, (whole, halves)
    print("counts (one process, two):", whole, halves)
    # DPO's reference log-probs of 16 preference pairs, computed on the mesh: the same numbers, each process
    # tokenising the pairs of its own shards (its half of each batch of 8, plus row 0 to learn the columns)
    for side in ("chosen", "rejected"):
        k = f"['reference']/['reference_{side}_logps']"
        assert a[k].shape == (16,) and np.all(a[k] < 0), a[k]
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5)
    assert whole["preference_pairs"] > 0, whole
    for h in halves:
        assert h["preference_pairs"] <= (0.5 + 1 / 16) * whole["preference_pairs"], (whole, halves)


_MLAC = [
    "--preset", "mlac-offline", "--mlac-run.hidden-size", "16", "--mlac-run.num-layers", "1",
    "--mlac-run.intermediate-size", "32", "--mlac-run.max-length", "24", "--mlac-run.num-examples", "400",
    "--mlac-run.warmup-steps", "0", "--mlac-run.val-examples", "40",
    "--mlac-run.fast-compile", "true", "--mlac.inner-steps", "1", "--mlac.outer-steps", "2", "--mlac.eval-every", "1",
    "--mlac.outer-lr", "1e-3", "--mlac.calibration-steps", "2", "--mlac.inner-batch-sizes", "[8, 16]",
    "--mlac.outer-batch-size", "16", "--run.progress", "false", "--run.tensorboard", "false", "--run.mesh-fsdp", "2",
]  # fmt: skip


# `jaxtar defend ...`, counting the texts this process reads to fit the word tokenizer and the texts it tokenises
_COUNTING_LAUNCH = """
import atexit, json, os, sys
import jaxtar.commands.defend, jaxtar.data.bios_tokens as tokens
from jaxtar.cli import main
seen, count_words, encode_texts = {"counted": 0, "tokenised": 0}, tokens.count_words, tokens.encode_texts
def counting(texts):
    texts = list(texts)
    seen["counted"] += len(texts)
    return count_words(texts)
def encoding(texts, *args):
    seen["tokenised"] += len(texts)
    return encode_texts(texts, *args)
tokens.count_words, tokens.encode_texts = counting, encoding
atexit.register(lambda: open(os.environ["COUNTS_FILE"], "w").write(json.dumps(seen)))
sys.exit(main(sys.argv[1:]))
"""


def test_mlac_across_two_processes_equals_one_process(tmp_path):
    """`jaxtar defend mlac` (2 MLAC steps, the weights FSDP-sharded across the processes: mesh fsdp 2) on two
    processes x 1 device logs the metrics of one process x 2 devices (1e-5 relative), exports the same weights and
    baseline (gathered on every process, written by process 0; the others wait) and reports the same test
    accuracies. Each process counts words of only its half of the train texts (the counts are added up) and
    tokenises only its half of the defence set's training and validation rows and of the test rows."""
    port = _free_port()

    def start(out, devices, *mp):
        cmd = [sys.executable, "-c", _COUNTING_LAUNCH, "defend", "mlac", *_MLAC, "--output", str(out), *mp]
        env = dict(_env(devices), COUNTS_FILE=f"{out}.counts.{mp[-1] if mp else 0}.json")
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    two, one = tmp_path / "two", tmp_path / "one"
    mp = lambda i: ["--run.coordinator", f"localhost:{port}", "--run.num-processes", "2", "--run.process-id", str(i)]  # noqa: E731
    _ok(_finish([start(two, 1, *mp(0)), start(two, 1, *mp(1)), start(one, 2)]))
    counts = lambda out, i: json.loads(Path(f"{out}.counts.{i}.json").read_text())  # noqa: E731
    whole, halves = counts(one, 0), [counts(two, i) for i in (0, 1)]
    # 400 examples: 340 train texts, of which 40 are the defence's validation rows and 300 its training rows, and 40
    # test rows; each process tokenises its half of each, and process 1 also row 0 of the train and test tables (made
    # on creation to learn their columns; in process 0's half)
    assert whole == {"counted": 340, "tokenised": 300 + 40 + 40}, whole
    assert halves == [{"counted": 170, "tokenised": 150 + 20 + 20 + extra} for extra in (0, 2)], halves
    a, b = _metrics(two), _metrics(one)
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(b) >= 2
    for x, y in zip(a, b, strict=True):
        for k, v in y.items():
            if isinstance(v, float) and k not in ("step_time_s", "tokens_per_s"):
                assert abs(x[k] - v) <= METRIC_RTOL * max(abs(v), 1e-6), (y["step"], k, x[k], v)
    for folder in ("model", "baseline"):
        wa, wb = load_file(str(two / folder / "model.safetensors")), load_file(str(one / folder / "model.safetensors"))
        assert sorted(wa) == sorted(wb) and max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wb) <= WEIGHT_ATOL
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (two, one))
    assert sa["test_desired_accuracy"] == sb["test_desired_accuracy"] and sa["best_step"] == sb["best_step"]


# ----------------------------------------------------------------------------------------------- bad input, exit 2
def test_run_config_validation():
    run = load_config("toy", {"run.coordinator": "node-0:1234", "run.num_processes": 2, "run.process_id": 1}).run
    assert (run.distributed, run.coordinator, run.num_processes, run.process_id) == ("auto", "node-0:1234", 2, 1)
    assert check_coordinator_address("[::1]:80") == ("::1", 80)
    for bad, match in (
        ({"run.num_processes": 2, "run.process_id": 2}, r"process_id must be in \[0, 2\)"),
        ({"run.process_id": -1}, "process_id"),
        ({"run.coordinator": "localhost"}, "HOST:PORT"),
        ({"run.coordinator": "localhost:70000"}, "HOST:PORT"),
        ({"run.distributed": "maybe"}, "distributed must be one of"),
        ({"run.distributed": "off", "run.num_processes": 2}, "is 'off' but num_processes"),
        ({"run.num_processes": 0}, "num_processes must be > 0"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_config("toy", bad)


def test_process_id_out_of_range_exits_2(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["defend", "tar", "--preset", "toy", "--output", str(out), "--run.coordinator", "localhost:1234",
            "--run.num-processes", "2", "--run.process-id", "2"]  # fmt: skip
    assert main(argv) == 2
    assert "process_id must be in [0, 2)" in capsys.readouterr().err
    assert not out.exists()


def test_unreachable_coordinator_exits_2_in_bounded_time(tmp_path, capsys):
    """Process 1 whose coordinator never answers gives up after --run.coordinator-timeout (3 s here), before the
    distributed runtime or the run folder is touched."""
    out = tmp_path / "run"
    port = _free_port()  # nothing listens there
    argv = ["defend", "tar", "--preset", "toy", "--output", str(out), "--run.coordinator", f"localhost:{port}",
            "--run.num-processes", "2", "--run.process-id", "1", "--run.coordinator-timeout", "3"]  # fmt: skip
    t = time.perf_counter()
    assert main(argv) == 2
    elapsed = time.perf_counter() - t
    assert 3 <= elapsed < 30, elapsed
    assert f"the coordinator localhost:{port} is unreachable" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", ["redteam", "eval", "bench"])
def test_tool_commands_take_the_process_flags_and_refuse_bad_ones(command, tmp_path, capsys):
    """`jaxtar redteam`, `eval` and `bench` take defend's --run.* process flags: an out-of-range process id exits 2
    at once, an unreachable coordinator after --run.coordinator-timeout; nothing is written."""
    out = tmp_path / "out"
    argv = {"redteam": ["redteam", "toy", "--out", str(out)], "eval": ["eval", "toy", "--out", str(out)],
            "bench": ["bench", "--json", str(out)]}[command]  # fmt: skip
    assert main([*argv, "--run.num-processes", "2", "--run.process-id", "2"]) == 2
    assert "process_id must be in [0, 2)" in capsys.readouterr().err
    port = _free_port()  # nothing listens there
    t = time.perf_counter()
    code = main([*argv, "--run.coordinator", f"localhost:{port}", "--run.num-processes", "2", "--run.process-id", "1",
                 "--run.coordinator-timeout", "2"])  # fmt: skip
    assert code == 2 and 2 <= time.perf_counter() - t < 30
    assert f"the coordinator localhost:{port} is unreachable" in capsys.readouterr().err
    assert not out.exists()


def test_mesh_not_spanning_all_processes_exits_2(tmp_path):
    """Two processes (8 devices in all) asked for a 2-device mesh: both exit 2 naming the sizes and their process;
    nothing written."""
    out = tmp_path / "run"
    t = time.perf_counter()
    results = _finish(_processes(2, [*_FLAGS, "--run.mesh-data", "2", "--output", str(out)], devices=4), 300)
    elapsed = time.perf_counter() - t
    for i, (rc, _, err) in enumerate(results):
        assert rc == 2, err[-2000:]
        assert "= 2 devices, but the 2 processes have 8 devices in all (4 each)" in err
        assert f"[process {i}/2] jaxtar defend: error:" in err  # each process's error says which process it is
    assert elapsed < 120, elapsed
    assert not out.exists()


_REDTEAM = ["redteam", "a=toy", "b=toy", "--suite", "toy", "--only", "toy-adamw-1e-3,toy-r2f-adamw-1e-3", "--steps",
            "4", "--chunk-steps", "4", "--seeds", "0", "1", "--mcq-limit", "16", "--no-progress"]  # fmt: skip


def test_red_team_grid_across_two_processes_equals_one_process(tmp_path):
    """`jaxtar redteam` across two processes, process 0 started from JAX's standard variables (JAX_COORDINATOR_ADDRESS
    / JAX_NUM_PROCESSES / JAX_PROCESS_ID), process 1 from the --run.* flags: each attacks its half of the 2 models x 2
    adversaries x 2 seeds grid, process 0 gathers every run and writes one results.json equal to the one-process
    run's (timings aside; losses to 1e-5)."""
    port = _free_port()
    launch = "import sys; from jaxtar.cli import main; sys.exit(main(sys.argv[1:]))"

    def start(args, extra_env):
        env = {**_env(1), **extra_env}
        return subprocess.Popen([sys.executable, "-c", launch, *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    shared = {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2"}
    flags = ["--run.coordinator", f"localhost:{port}", "--run.num-processes", "2", "--run.process-id", "1"]
    procs = [
        start([*_REDTEAM, "--out", str(tmp_path / "two")], {**shared, "JAX_PROCESS_ID": "0"}),
        start([*_REDTEAM, "--out", str(tmp_path / "two"), *flags], {}),
    ]
    procs.append(start([*_REDTEAM, "--out", str(tmp_path / "one")], {}))
    results = _finish(procs)
    _ok(results)
    assert "wrote" in results[0][1] and "wrote" not in results[1][1]  # process 0 reports, process 1 ran its share

    def runs(folder):
        data = json.loads((folder / "results.json").read_text())
        strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
        return data["metadata"], [strip(r) for r in data["runs"]], data["before"]

    (meta_two, two, before_two), (meta_one, one, before_one) = runs(tmp_path / "two"), runs(tmp_path / "one")

    def diff(a, b, path=""):  # floats to 1e-5 relative (the processes' thread pools sum in other orders), else equal
        if isinstance(a, dict):
            return [d for k in a.keys() | b.keys() for d in diff(a.get(k), b.get(k), f"{path}.{k}")]
        if isinstance(a, list):
            return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in diff(x, y, f"{path}[{i}]")]
        if isinstance(a, float) and isinstance(b, float):
            return [] if abs(a - b) <= 1e-5 * max(abs(b), 1e-6) else [(path, a, b)]
        return [] if a == b else [(path, a, b)]

    assert len(two) == 8 and not diff(two, one) and not diff(before_two, before_one), diff(two, one)[:5]
    # measured: losses agree to ~2e-7 relative; accuracies exactly
    assert meta_two["processes"] == 2 and "processes" not in meta_one
