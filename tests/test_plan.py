"""``jaxtar plan``: the printed plan, the per-component breakdown against the planner the defences use, per-device
numbers against XLA's own allocation on 8 simulated devices, and refused input (exit 2)."""

from __future__ import annotations

import re
import textwrap

import pytest

from jaxtar.cli import main
from jaxtar.config.plan import PlanConfig, parse_devices
from jaxtar.meta import Estimator
from jaxtar.meta.memory import COMPONENTS, Workload, peak_components, predict_peak_bytes

SMALL = ["--k", "8", "--every", "4", "--batch", "8", "--tamper-batch", "8", "--retain-batch", "8", "--seq", "256"]


def _parts(out: str) -> dict[str, float]:
    return {m.group(1).strip(): float(m.group(2)) for m in re.finditer(r"^  ([a-z ]+?)\s+([\d.]+) GiB", out, re.M)}


def test_cli_prints_every_component_a_mesh_and_a_time(capsys):
    assert main(["plan", "SmolLM2-135M", "--devices", "8xH100-80GB", "--estimator", "exact", *SMALL]) == 0
    out = capsys.readouterr().out
    parts = _parts(out)
    assert list(parts) == [*COMPONENTS, "total"]
    assert abs(sum(v for k, v in parts.items() if k != "total") - parts["total"]) < 0.05
    mesh = re.search(r"estimator exact: mesh data x fsdp x adversary = (\d+)x(\d+)x(\d+)", out)
    assert mesh and int(mesh[1]) * int(mesh[2]) * int(mesh[3]) == 8
    assert int(mesh[1]) == 8  # SmolLM2 at these batches fits pure data parallelism: preferred
    assert ": fits" in out and re.search(r"step time: [\d.e+]+ FLOP per outer step -> [\d.]+ s at 40 %", out)
    table = {
        r[0].strip(): r
        for r in (line.strip("|").split("|") for line in out.splitlines()[1:])
        if len(r) == 6 and r[0].strip() in ("exact", "mixed", "remat", "remat-2level", "tar", "first_order")
    }
    assert set(table) == {"exact", "mixed", "remat", "remat-2level", "tar", "first_order"}
    gib = {k: float(r[2]) for k, r in table.items()}
    assert gib["exact"] > gib["mixed"] > gib["remat"] > gib["tar"]  # the planner's order
    assert "recommended: exact" in out


def test_one_device_breakdown_is_the_defences_planner():
    """On one device the parts sum to `_fit.tar_bytes`, the number a defence refuses a run on."""
    from jaxtar.commands.plan import plan
    from jaxtar.defenses._fit import tar_bytes

    for preset in ("toy", "llama3-8b-bio"):
        p = plan(PlanConfig(model=preset, devices="cpu"))
        tar, model = p["inputs"]["tar"], type("M", (), {"config": p["inputs"]["model"]})
        row = p["rows"][p["chosen"]]
        assert p["chosen"] == "tar" and row["mesh"] == (1, 1, 1)
        assert abs(row["total"] - tar_bytes(model, tar, p["inputs"]["seq"])) <= 4, preset


def test_components_sum_to_the_planner_and_divide_on_a_mesh():
    from jaxtar.models import LlamaConfig

    w = Workload.for_llama(LlamaConfig.smollm2_135m(), batch_size=8, seq_len=128, steps=8, records=2, adversaries=4)
    for est in (Estimator("exact"), Estimator("mixed"), Estimator("remat", two_level=True), Estimator("tar"),
                Estimator("first_order"), Estimator("truncated", truncation=2)):  # fmt: skip
        for chunk in (None, 2):
            one = peak_components(w, est, chunk)
            assert abs(sum(one.values()) - predict_peak_bytes(w, est, chunk).total) <= 2, est
            dp = peak_components(w, est, chunk, (8, 1, 1))
            fsdp = peak_components(w, est, chunk, (1, 8, 1))
            assert dp["params"] == one["params"] and dp["activations"] == pytest.approx(one["activations"] / 8)
            assert fsdp["params"] == pytest.approx(one["params"] / 8) and fsdp["fsdp gathers"] > 0
            adv = peak_components(w, est, chunk, (1, 1, 2))
            assert adv["attack state"] == pytest.approx(one["attack state"] / 2)


def test_devices_and_meshes_parse():
    assert parse_devices("v5p-64") == (32, "v5p") and parse_devices("v4-32") == (16, "v4")
    assert parse_devices("8xH100-80GB") == (8, "H100-80GB") and parse_devices("cpu") == (1, "cpu")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--devices", "8xB300"], "unknown device"),
        (["--devices", "v5p-63"], "2 TensorCores per chip"),
        (["--devices", "8xH100-80GB", "--mesh", "2x2x1"], "--mesh 2x2x1 has 4 devices"),
        (["--devices", "3xH100", "--mesh", "3x1x1", "--batch", "8"], "does not divide the attack batch of 8"),
        (["--utilisation", "1.5"], "--utilisation must be in (0, 1]"),
        (["--estimator", "second"], "--estimator must be one of"),
    ],
)
def test_bad_input_exits_2(capsys, argv, message):
    assert main(["plan", "SmolLM2-135M", *argv]) == 2
    assert message in capsys.readouterr().err


def test_unknown_model_exits_2(capsys, tmp_path):
    assert main(["plan", str(tmp_path / "nowhere")]) == 2
    assert "unknown model" in capsys.readouterr().err


_XLA = textwrap.dedent(
    """
    import json, os
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp
    from jaxtar.attacks import Adversary, model_attack_problem
    from jaxtar.meta import AdversaryGroup, Estimator, TamperSchedule, vmap_meta_value_and_grad
    from jaxtar.meta.memory import Workload, compiled_peak_bytes, peak_components
    from jaxtar.models import LlamaConfig, create_model
    from jaxtar.parallel import batch_shardings, make_mesh, param_shardings, shard

    cfg = LlamaConfig.tiny(num_layers=2, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2)
    K, B, T, every = 4, 8, 32, 2
    model, params = create_model(cfg, seed=0)

    def ce(p, x, lora):
        logits = model.apply(p, x, lora=lora).logits[:, :-1]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), x[:, 1:, None], axis=-1))

    group = AdversaryGroup((Adversary("adamw", lr=1e-3, steps=K), Adversary("adamw", lr=2e-3, steps=K, seed=1)))
    problem = model_attack_problem(group.adversaries[0], ce, ce, model=model)
    ids = jax.random.randint(jax.random.key(1), (2, K, B, T), 0, cfg.vocab_size)
    tamper = jax.random.randint(jax.random.key(2), (B, T), 0, cfg.vocab_size)
    work = Workload.for_llama(cfg, batch_size=B, seq_len=T, steps=K, records=K // every, adversaries=2)
    out = []
    for mesh_shape, kinds in (((2, 2, 2), ("exact",)), ((4, 1, 2), ("exact",)), ((1, 4, 2), ("tar",))):
        mesh = make_mesh(*mesh_shape)
        p_sh = param_shardings(params, mesh)
        args = (shard(params, p_sh), shard(ids, batch_shardings(ids, mesh, 2, 0)),
                shard(tamper, batch_shardings(tamper, mesh, 0)))
        for kind in kinds:
            est = Estimator(kind)
            f = lambda p, b, t, est=est, mesh=mesh: vmap_meta_value_and_grad(
                problem, p, group, b, t, key=jax.random.key(0), schedule=TamperSchedule.tar(every=every),
                estimator=est, mesh=mesh).grads
            compiled = jax.jit(f, out_shardings=p_sh).lower(*args).compile()
            predicted = sum(peak_components(work, est, None, mesh_shape).values())
            out.append(dict(mesh=mesh_shape, kind=kind, measured=compiled_peak_bytes(compiled),
                            predicted=predicted))
    print(json.dumps(out))
    """
)


def test_per_device_prediction_within_2x_of_xla_on_8_devices(run_on_devices):
    rows = run_on_devices(_XLA)
    assert len(rows) == 3  # measured at writing: predicted / XLA = 0.85 (2x2x2), 0.69 (4x1x2), 1.02 (1x4x2 tar)
    for r in rows:
        ratio = r["predicted"] / r["measured"]
        assert 0.5 < ratio < 2.0, r
    by = {(tuple(r["mesh"]), r["kind"]): r["measured"] for r in rows}
    assert by[((4, 1, 2), "exact")] > by[((2, 2, 2), "exact")] > by[((1, 4, 2), "tar")]  # fsdp shrinks it, tar least
