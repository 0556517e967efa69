"""A registered version loads from its own MLflow artifact, in an environment that has never seen Pulse."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from pulse.data.contract import FEATURE_NAMES
from pulse.lifecycle import registry
from pulse.model.forecaster import DemandForecaster
from pulse.settings import MODEL_NAME, PulseSettings

# Run in the clean environment: proves Pulse is absent there, then loads and predicts through pyfunc.
LOAD = """
import importlib.util, sys
import pandas as pd
assert importlib.util.find_spec("pulse") is None, "pulse is importable: the environment is not clean"
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(pd.read_pickle(sys.argv[2])).to_pickle(sys.argv[3])
"""


def small_forecaster() -> DemandForecaster:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({f: rng.poisson(2, 600).astype(float) for f in FEATURE_NAMES})
    frame["service_type"] = rng.integers(1, 3, 600).astype(float)
    frame["target_30"] = rng.poisson(frame["requests_last_week_ahead_2"] + 0.5).astype(float)
    frame["target_60"] = rng.poisson(frame["requests_last_week_ahead_4"] + 0.5).astype(float)
    f = DemandForecaster(horizons=[30, 60], cells=["882a100d2bfffff"], service_types=[1, 2])
    f.num_rounds = 10
    return f.fit(frame.iloc[:450], frame.iloc[450:])


def feature_rows() -> pd.DataFrame:
    rng = np.random.default_rng(9)
    rows = pd.DataFrame({f: rng.poisson(3, 8).astype(float) for f in FEATURE_NAMES})
    rows["service_type"] = [1, 2] * 4
    return rows


def uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else ["python3", "-m", "uv"]  # the Makefile installs uv into the machine's Python


def test_registered_model_loads_and_predicts_in_a_fresh_venv(tmp_path):
    """Log a version as training does, build a venv with `uv venv` from nothing but the version's
    `requirements.txt`, and call `mlflow.pyfunc.load_model` + `predict` there in a subprocess: the same
    forecasts as in process. uv's cache makes the install a few seconds (PyPI resolves the unpinned
    transitive dependencies); the fresh interpreter's first imports of mlflow and lightgbm take most of the
    rest."""
    settings = PulseSettings(home=tmp_path / "home")
    mlflow.set_tracking_uri(settings.tracking_uri)
    forecaster = small_forecaster()
    with mlflow.start_run(experiment_id=registry.experiment_id(settings)) as run:
        version = registry.log_forecaster(forecaster, run.info.run_id)
    artifact = Path(
        mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}/{version}", dst_path=str(tmp_path / "model"))
    )
    requirements = (artifact / "requirements.txt").read_text().split()
    assert requirements and all("==" in r for r in requirements), requirements  # every package pinned
    assert not (artifact / "uv.lock").exists()  # the project's lock would rebuild all of Pulse
    code = artifact / "code" / "pulse"
    shipped = sorted(str(p.relative_to(code)) for p in code.rglob("*.py"))
    assert shipped == [
        "__init__.py",
        "data/__init__.py",
        "data/contract.py",
        "model/__init__.py",
        "model/forecaster.py",
        "model/pyfunc.py",
    ]

    rows = feature_rows()
    rows.to_pickle(tmp_path / "rows.pkl")
    # In-process loads go through the forecaster: mlflow.pyfunc.load_model would prepend the model's code folder
    # to this process's sys.path, where its partial `pulse` package shadows the real one (see pulse/model/pyfunc.py).
    expected = forecaster.predict(rows)

    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    for cmd in (
        [*uv(), "venv", "--quiet", "--python", minor, str(venv)],
        [*uv(), "pip", "install", "--quiet", "--python", str(python), "-r", str(artifact / "requirements.txt")],
        [str(python), "-c", LOAD, str(artifact), str(tmp_path / "rows.pkl"), str(tmp_path / "out.pkl")],
    ):
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{cmd[:3]}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    pd.testing.assert_frame_equal(pd.read_pickle(tmp_path / "out.pkl"), expected)


def test_requirements_pin_the_installed_versions():
    from importlib.metadata import version

    pins = dict(r.split("==") for r in registry.pyfunc_requirements())
    assert pins == {
        name: version(name) for name in ("mlflow-skinny", "cloudpickle", "lightgbm", "numpy", "pandas", "scipy")
    }
