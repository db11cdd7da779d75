"""XLA flags of the test session (tests/ and notebooks/): quick compiles for tests, a user's flags for notebooks.

Most tests compile more than they run, so the session asks XLA for quick compiles: its -O0 (measured on tests/meta +
tests/defenses, 2 cores: 375 s instead of 560 s) and its older CPU fusion code generator instead of the MLIR fusion
emitters (tests/meta + tests/mlac/test_mlac_train.py + tests/test_demo.py: 185 s instead of 244 s); every test passes
either way. The scripts the tests start (simulated devices, other processes) inherit them and add their own.

The notebooks run more than they compile, and a user runs them with XLA's defaults: their kernels start with the flags
the session started with (notebook 03: 55 s instead of 91 s); a notebook that compiles much asks for quick compiles
itself (02's ``compiler_options``, 04's ``mlac_run.fast_compile``). The product and the benchmarks keep XLA's defaults.
"""

import os

import pytest

QUICK_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
_STARTING = "JAXTAR_TESTS_STARTING_XLA_FLAGS"  # set by the first process (xdist's workers inherit it)

if _STARTING not in os.environ:
    os.environ[_STARTING] = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in os.environ[_STARTING]:  # unless the user names a level
        os.environ["XLA_FLAGS"] = f"{os.environ[_STARTING]} {QUICK_COMPILE}".strip()


def _set_xla_flags(value: str) -> None:
    if value:
        os.environ["XLA_FLAGS"] = value
    else:
        os.environ.pop("XLA_FLAGS", None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A notebook's kernel (started by nbmake while the item runs) gets the session's starting XLA flags."""
    if item.path.suffix != ".ipynb":
        return (yield)
    session_flags = os.environ.get("XLA_FLAGS", "")
    _set_xla_flags(os.environ[_STARTING])
    try:
        return (yield)
    finally:
        _set_xla_flags(session_flags)
