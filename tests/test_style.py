"""The house rules that a linter can hold (../STYLE in the README's words): ruff's lint rules and its formatting on
every Python file, and no file over 300 lines."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREES = ["hovle", "tests", "benchmarks", "tools", "setup.py"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args, *TREES], capture_output=True, text=True, cwd=ROOT)


def test_ruff_lint_passes():
    done = _ruff("check")
    assert done.returncode == 0, done.stdout[-4000:]


def test_ruff_format_is_applied():
    done = _ruff("format", "--check")
    assert done.returncode == 0, done.stdout[-4000:] + "\nrun `make format`"


def test_no_python_file_is_over_300_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for tree in TREES
        for p in (ROOT / tree).rglob("*.py")
        if p.is_file()
        for n in [len(p.read_text(encoding="utf-8").splitlines())]
        if n > 300
    }
    assert not long, long
