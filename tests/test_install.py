"""The installed package lives beside everything else a user has: the wheel holds one top-level name, `hovle`, and
transformers, Hugging Face's own `kernels` package and `hovle` import together in one fresh process (they could
not while this project installed top-level `engine` and `kernels` packages). The independent reference never
loads the engine's code."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "HOVLE_BUILD_CUDA": "0"}
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("hovle_engine-*.whl")
    return path


def test_the_wheel_installs_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (record,) = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
        paths = [line.split(",")[0] for line in zf.read(record).decode().splitlines() if line]
    top = {p.split("/")[0] for p in paths if not p.split("/")[0].endswith(".dist-info")}
    assert top == {"hovle"}, f"top-level names in the wheel: {sorted(top)}"
    assert "hovle/kernels/__init__.py" in paths and "hovle/reference/model.py" in paths
    assert any(p.startswith("hovle/data/default-model/hovle/") for p in paths)  # the embedded model ships


def test_hovle_transformers_and_hf_kernels_import_together(wheel, tmp_path):
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = (
        "import json, kernels, transformers\n"
        "from transformers import LlamaConfig\n"
        "import hovle\n"
        "from hovle import Engine\n"
        "import hovle.kernels\n"
        "print(json.dumps({'hf_kernels': kernels.__file__, 'hovle': hovle.__file__,"
        " 'ours': hovle.kernels.__file__, 'engine': Engine.__module__, 'llama': LlamaConfig.__name__}))\n"
    )
    # A fresh process, outside the repository (so nothing is found through the working directory).
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["hovle"]).is_relative_to(site) and Path(found["ours"]).is_relative_to(site / "hovle")
    assert not Path(found["hf_kernels"]).is_relative_to(site), "Hugging Face's kernels was shadowed"
    assert found["engine"] == "hovle.engine" and found["llama"] == "LlamaConfig"


def test_the_reference_imports_no_engine_code():
    probe = (
        "import json, sys\n"
        "import hovle.reference.model, hovle.reference.static\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('hovle'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "hovle.reference.model" in loaded and "hovle.reference.static" in loaded
    assert all(m == "hovle" or m.startswith("hovle.reference") for m in loaded), loaded
