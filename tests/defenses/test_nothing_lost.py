"""Nothing lost, nothing silent: divergence stops a run, run folders are locked, resumes check their inputs, and
bad input exits 2 before anything is written."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jaxtar.commands.defend  # noqa: F401 - registers `jaxtar defend`
from jaxtar.checkpoint import Checkpointer
from jaxtar.cli import main
from jaxtar.models import LlamaConfig, create_model, save_pretrained
from jaxtar.runlock import RunLock
from jaxtar.toy import toy_world

TINY_TAR = ["--tar.inner-steps", "2", "--tar.tamper-every", "1", "--tar.adversary-batch-size", "2",
            "--tar.tamper-batch-size", "2", "--tar.retain-batch-size", "2", "--tar.warmup-steps", "0",
            "--data.max-length", "16", "--run.tensorboard", "false", "--run.progress", "false"]  # fmt: skip
TINY_RM = ["--random-mapping.forget-batch-size", "2", "--random-mapping.retain-batch-size", "2",
           "--random-mapping.warmup-steps", "0", "--data.max-length", "16", "--run.tensorboard", "false",
           "--run.progress", "false"]  # fmt: skip


def _tiny(path: Path) -> Path:
    cfg = LlamaConfig(vocab_size=320, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                      max_position_embeddings=64, tie_word_embeddings=True)  # fmt: skip
    model, params = create_model(cfg, seed=0)
    return save_pretrained(model, params, path, tokenizer=toy_world(0).tokenizer)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory.mktemp("models") / "base")


def _defend(capsys, method: str, *args: str) -> tuple[int, str]:
    code = main(["defend", method, *args])
    return code, capsys.readouterr().err


def _checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _all_checkpoints_finite(folder: Path) -> bool:
    ckpt = Checkpointer(folder / "checkpoints")
    try:
        import jax

        for step in ckpt.all_steps():
            state = ckpt._manager.restore(step, args=ckpt._ocp.args.Composite(state=ckpt._ocp.args.StandardRestore()))
            for leaf in jax.tree.leaves(state["state"]):
                arr = np.asarray(leaf)
                if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                    return False
        return True
    finally:
        ckpt.close()


# ----------------------------------------------------------------------------------------------- divergence
@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("tar", ["--tar.lr", "1e30", "--tar.outer-steps", "4", "--run.checkpoint-every", "1", *TINY_TAR]),
        ("random-mapping", ["--random-mapping.lr", "1e30", "--random-mapping.steps", "4",
                            "--run.checkpoint-every", "1", *TINY_RM]),
    ],
)  # fmt: skip
def test_a_diverging_defence_stops_exports_nothing_and_exits_3(base, tmp_path, capsys, method, args):
    out = tmp_path / "run"
    code, err = _defend(capsys, method, "--model.path", str(base), *args, "--output", str(out))
    assert code == 3, err
    found = re.search(
        r"diverged: non-finite loss, weights or optimiser state at step (\d+); stopped, nothing exported", err
    )
    assert found, err
    assert not (out / "model").exists() and not (out / "result.json").exists()
    assert _all_checkpoints_finite(out)  # never a non-finite checkpoint
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == int(found[1]) < 4  # the diverged step is logged, then the run stops


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--tar.lr", ".inf", "TarConfig.lr must be a finite number, got inf"),
        ("--tar.lambda-tr", ".nan", "TarConfig.lambda_tr must be a finite number, got nan"),
        ("--tar.weight-decay", ".inf", "TarConfig.weight_decay must be a finite number, got inf"),
        ("--random-mapping.lr", "-.inf", "RandomMappingConfig.lr must be a finite number"),
        ("--run.seed", "99999999999999999999", "RunConfig.seed must be in [0, 4294967295]"),
        ("--random-mapping.mapping-seed", "-1", "mapping_seed must be in [0, 4294967295]"),
        ("--tar.outer-steps", "3000000000", "TarConfig.outer_steps = 3000000000 is out of range"),
    ],
)
def test_non_finite_and_out_of_range_config_values_exit_2_before_writing(tmp_path, capsys, flag, value, message):
    out = tmp_path / "run"
    method = "random-mapping" if flag.startswith("--random-mapping.") else "tar"  # each method takes its own flags
    code, err = _defend(capsys, method, f"{flag}={value}", "--output", str(out))
    assert code == 2 and message in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ run folders
def test_a_run_folder_in_use_is_refused_and_left_unchanged(base, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--model.path", str(base), "--random-mapping.steps", "2", *TINY_RM, "--output", str(out)]
    assert _defend(capsys, "random-mapping", *args)[0] == 0
    before = _checksums(out)
    holder = RunLock(out).acquire()  # another writer (flock conflicts across open files, even in one process)
    try:
        code, err = _defend(capsys, "random-mapping", *args[:-2], "--random-mapping.steps", "4", "--output",
                            str(out), "--resume")  # fmt: skip
    finally:
        holder.release()
    assert code == 2 and "is in use by pid" in err, err
    assert {k: v for k, v in _checksums(out).items() if k != ".jaxtar.lock"} == {
        k: v for k, v in before.items() if k != ".jaxtar.lock"
    }


_RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from jaxtar.runlock import claim_output_dir
    from jaxtar.errors import RunDirError
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.001)
    try:
        lock = claim_output_dir(sys.argv[1])
    except RunDirError as err:
        print("refused", type(err).__name__)
    else:
        (Path(sys.argv[1]) / "run.json").write_text("{}")
        time.sleep(0.3)
        print("claimed")
    """
)


def test_two_processes_opening_one_new_folder_never_both_get_it(tmp_path):
    for trial in range(4):
        go = tmp_path / f"go{trial}"
        target = tmp_path / f"run{trial}"
        procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(target), str(go)], stdout=subprocess.PIPE,
                                  text=True) for _ in range(2)]  # fmt: skip
        go.write_text("")
        outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
        assert outs[0] == "claimed" and outs[1].startswith("refused"), outs


# ---------------------------------------------------------------------------------------------------- resume
def test_resume_refuses_swapped_base_weights(tmp_path, capsys):
    base = _tiny(tmp_path / "base")
    out = tmp_path / "run"
    args = ["--model.path", str(base), *TINY_RM, "--output", str(out)]
    assert _defend(capsys, "random-mapping", *args, "--random-mapping.steps", "2")[0] == 0
    weights = load_file(base / "model.safetensors")
    key = next(iter(weights))
    weights[key] = weights[key] + 1.0  # same path, same shapes, other weights
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    before = _checksums(out)
    code, err = _defend(capsys, "random-mapping", *args, "--random-mapping.steps", "4", "--resume")
    assert code == 2 and "holds another run (inputs.model_sha256:" in err, err
    assert _checksums(out) == before


def test_resuming_a_finished_run_changes_nothing_and_fewer_steps_are_refused(base, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--model.path", str(base), *TINY_RM, "--output", str(out), "--run.checkpoint-every", "1"]
    assert _defend(capsys, "random-mapping", *args, "--random-mapping.steps", "3")[0] == 0
    before = _checksums(out)
    code, err = _defend(capsys, "random-mapping", *args, "--random-mapping.steps", "3", "--resume")
    assert code == 0 and "was already complete (3 steps); nothing changed" in err, err
    assert json.loads((out / "result.json").read_text())["metrics"]["step"] == 3
    after = _checksums(out)
    assert {k: after[k] for k in before if not k.startswith(("checkpoints", ".jaxtar"))} == {
        k: before[k] for k in before if not k.startswith(("checkpoints", ".jaxtar"))
    }
    code, err = _defend(capsys, "random-mapping", *args, "--random-mapping.steps", "2", "--resume")
    assert code == 2 and "has 3 steps done, more than the 2 steps asked for" in err, err
    assert json.loads((out / "result.json").read_text())["metrics"]["step"] == 3


def test_a_torn_last_metrics_line_is_dropped_and_a_damaged_one_named(base, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--model.path", str(base), *TINY_RM, "--output", str(out), "--run.checkpoint-every", "1"]
    assert _defend(capsys, "random-mapping", *args, "--random-mapping.steps", "2")[0] == 0
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 3, "phase": "rand')  # a kill mid-write
    assert _defend(capsys, "random-mapping", *args, "--random-mapping.steps", "3", "--resume")[0] == 0
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [1, 2, 3]
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    code, err = _defend(capsys, "random-mapping", *args, "--random-mapping.steps", "4", "--resume")
    assert code == 2 and f"{metrics}, line 2:" in err, err


# ----------------------------------------------------------------------------------------- bad input, exit 2
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.max-length", "100000"], "data.max_length = 100000 exceeds the model's 64 positions"),
        (["--tar.adversary-batch-size", "1000000"], "the memory planner predicts"),
    ],
)
def test_sizes_that_cannot_work_are_refused_before_the_folder_exists(base, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code, err = _defend(capsys, "tar", "--model.path", str(base), *TINY_TAR, *args, "--output", str(out))
    assert code == 2 and message in err, err
    assert not out.exists()


def test_the_memory_refusal_names_its_escape(base, tmp_path, capsys):
    code, err = _defend(capsys, "tar", "--model.path", str(base), *TINY_TAR, "--tar.adversary-batch-size",
                        "1000000", "--output", str(tmp_path / "run"))  # fmt: skip
    assert code == 2 and "--force" in err


def test_abbreviated_flags_are_errors(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["defend", "tar", "--tar.outer_step", "3", "--output", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert not (tmp_path / "run").exists()


def test_an_unwritable_output_parent_exits_2_and_writes_nothing(base, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    code, err = _defend(capsys, "random-mapping", "--model.path", str(base), *TINY_RM, "--random-mapping.steps",
                        "1", "--output", str(blocker / "run"))  # fmt: skip
    assert code == 2 and str(blocker / "run") in err, err
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(
    "command",
    [["demo", "--quick", "--no-progress", "--output"], ["defend", "mlac", "--mlac.outer-steps", "1", "--output"]],
)
def test_demo_and_mlac_refuse_a_folder_another_process_writes(tmp_path, capsys, command):
    folder = tmp_path / "busy"
    folder.mkdir()
    holder = RunLock(folder).acquire()
    try:
        code = main([*command, str(folder)])
    finally:
        holder.release()
    assert code == 2 and "is in use by pid" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == [".jaxtar.lock"]


@pytest.mark.parametrize("command", [["demo", "--quick", "--no-progress", "--output"], ["defend", "mlac", "--output"]])
def test_demo_and_mlac_under_an_unwritable_parent_exit_2(tmp_path, capsys, command):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    assert main([*command, str(blocker / "out")]) == 2
    assert "cannot create" in capsys.readouterr().err and blocker.read_text() == "not a folder"


def test_non_finite_weights_are_refused_unless_allowed(tmp_path, capsys):
    base = _tiny(tmp_path / "base")
    weights = load_file(base / "model.safetensors")
    key = sorted(weights)[0]
    weights[key] = np.full_like(weights[key], np.nan)
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    assert main(["convert", str(base), str(tmp_path / "out")]) == 2
    assert key in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.warns(UserWarning, match=key):
        assert main(["convert", str(base), str(tmp_path / "out"), "--allow-nonfinite"]) == 0
    code, err = _defend(capsys, "random-mapping", "--model.path", str(base), *TINY_RM, "--output",
                        str(tmp_path / "run"))  # fmt: skip
    assert code == 2 and key in err and not (tmp_path / "run").exists()


def test_diverging_adversaries_do_not_stop_tar(base, tmp_path, capsys):
    # TAR is built to survive attacks that blow up: their gradients are zeroed and counted, the weights stay finite
    out = tmp_path / "run"
    code, err = _defend(capsys, "tar", "--model.path", str(base), *TINY_TAR, "--tar.outer-steps", "2",
                        "--tar.adversary-lrs", "[1e30]", "--output", str(out))  # fmt: skip
    assert code == 0, err
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["finite_fraction"] == 0.0 and np.isfinite(r["loss"]) for r in lines)
    assert all(np.isfinite(v).all() for v in load_file(out / "model" / "model.safetensors").values())


def test_fewer_steps_than_done_in_an_earlier_phase_are_refused(base, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--model.path", str(base), *TINY_TAR, "--tar.sft-steps", "1", "--tar.sft-batch-size", "2",
            "--run.checkpoint-every", "1", "--output", str(out)]  # fmt: skip
    assert _defend(capsys, "tar", *args, "--tar.outer-steps", "3")[0] == 0
    shutil.rmtree(out / "checkpoints" / "4")  # as if killed before SFT's step: the newest checkpoint is TAR's 3rd
    before = _checksums(out)
    code, err = _defend(capsys, "tar", *args, "--tar.outer-steps", "2", "--resume")  # 2 + 1 steps in all
    assert code == 2 and "more than the 2 steps of its tar phase asked for" in err, err
    assert {k: v for k, v in _checksums(out).items() if k != ".jaxtar.lock"} == {
        k: v for k, v in before.items() if k != ".jaxtar.lock"
    }


def test_resume_refuses_changed_local_data(base, tmp_path, capsys):
    forget = tmp_path / "forget.txt"
    forget.write_text("\n".join(toy_world(0).forget_texts[:40]))
    out = tmp_path / "run"
    args = ["--model.path", str(base), *TINY_RM, "--data.forget", str(forget), "--output", str(out)]
    assert _defend(capsys, "random-mapping", *args, "--random-mapping.steps", "1")[0] == 0
    forget.write_text("\n".join(toy_world(0).forget_texts[40:80]))  # same path, other text
    code, err = _defend(capsys, "random-mapping", *args, "--random-mapping.steps", "2", "--resume")
    assert code == 2 and "inputs.data.forget" in err, err


def test_force_runs_past_the_memory_refusal(base, tmp_path, capsys, monkeypatch):
    import jaxtar.defenses._fit as fit

    monkeypatch.setattr(fit, "_host_available", lambda: 1024)  # a machine with 1 KiB free
    args = ["--model.path", str(base), *TINY_RM, "--random-mapping.steps", "1"]
    code, err = _defend(capsys, "random-mapping", *args, "--output", str(tmp_path / "refused"))
    assert code == 2 and "the memory planner predicts" in err and not (tmp_path / "refused").exists()
    code, err = _defend(capsys, "random-mapping", *args, "--force", "--output", str(tmp_path / "forced"))
    assert code == 0 and (tmp_path / "forced" / "model").is_dir(), err
