"""Bad input to `jaxtar defend mlac` and `jaxtar redteam-classifier`: clear message, exit code 2, nothing written."""

import pytest

from jaxtar.cli import main


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--output DIR is required"),
        (["--output", "{tmp}/run", "--mlac.inner-lr", "5"], "must lie in inner_lr_bounds"),
        (["--output", "{tmp}/run", "--mlac.outr-steps", "5"], "unrecognized arguments"),
        (["--output", "{tmp}/run", "--mlac.variant", "censor"], "variant must be one of"),
        (["--output", "{tmp}/run", "--mlac-run.data", "imdb"], "run.data must be one of"),
        (["--output", "{tmp}/run", "--preset", "mlac-ofline"], "did you mean 'mlac-offline'"),
        (["--output", "{tmp}/run", "--tar.outer-steps", "3"], "unrecognized arguments: --tar.outer-steps"),
        (["--output", "{tmp}/run", "--run.mesh-adversary", "2"], "mesh"),
    ],
)
def test_defend_mlac_rejects_bad_input(tmp_path, capsys, extra, message):
    argv = ["defend", "mlac", *[a.replace("{tmp}", str(tmp_path)) for a in extra]]
    if message.startswith("unrecognized arguments"):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    else:
        assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_defend_mlac_never_overwrites_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("old run")
    assert main(["defend", "mlac", "--output", str(run), "--mlac.outer-steps", "1"]) == 2
    assert "is not empty and holds no jaxtar run" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"] and (run / "keep.txt").read_text() == "old run"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give at least one MODEL or --run DIR"),
        (["--run", "{tmp}/nothing"], "is not an MLAC run folder"),
        (["{tmp}/missing-model"], "missing-model"),
        (["a={tmp}/x", "a={tmp}/y"], "given twice"),
        (["--run", "{tmp}/r", "--ns", "0"], "ns must be positive ints"),
    ],
)
def test_redteam_classifier_rejects_bad_input(tmp_path, capsys, args, message):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("run: {data: synthetic, num_examples: 400}\n")
    argv = ["redteam-classifier", *[a.replace("{tmp}", str(tmp_path)) for a in args], "--output", str(tmp_path / "o")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
