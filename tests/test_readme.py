"""The README runs as written: every fenced shell and Python block is executed against the embedded default model,
or is marked as one that cannot run here (and then listed as a skipped test, with its reason).

Each block carries a marker on the line above it:
    <!-- readme: run, expect "a" "b" -->     run it; it must exit 0 and print every expected string
    <!-- readme: serve, expect "a" -->       start it in the background (a server) until it prints "a"; the blocks
                                             that talk to 127.0.0.1:8000 run against it
    <!-- readme: skip (reason) -->           cannot run here (a GPU, real weights, minutes of work)

The documented substitutions, and nothing else: HOME is a fresh folder whose ~/models/HoVLE and ~/models/HoVLE-HD
are copies of the embedded default models (so "~/models/..." finds a model) and ~/pictures exists; the working
folder holds photo.jpg, photo.png, house.png and tree.png made from hovle/data/example.png; `.venv/bin/python` is
this interpreter; device="cuda" / dtype="bfloat16" become "cpu" / "float32"; /tmp/ becomes a temporary folder; and
port 8000 becomes a free port.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"<!-- readme: (run|serve|skip)(.*?) -->")
RUNNABLE = ("bash", "sh", "shell", "python")
pytestmark = pytest.mark.xdist_group("readme")  # one worker: one set-up, one server


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    kind: str  # run | serve | skip | "" (no marker)
    expect: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.lang}-{self.kind or 'unmarked'}"


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block of a runnable language, with the marker of the nearest non-blank line above it."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = re.match(r"^```(\w*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        lang = opening.group(1)
        if lang in RUNNABLE:
            above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            m = MARKER.fullmatch(above.strip())
            kind, rest = (m.group(1), m.group(2)) if m else ("", "")
            blocks.append(
                Block(
                    line=i + 1,
                    lang=lang,
                    code="\n".join(lines[i + 1 : end]) + "\n",
                    kind=kind,
                    expect=re.findall(r'"([^"]*)"', rest.partition("expect")[2]),
                    reason=rest.strip().strip(",").strip().strip("()"),
                )
            )
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


def test_every_runnable_block_is_marked():
    unmarked = [b.id for b in BLOCKS if not b.kind]
    assert not unmarked, f"README blocks without a <!-- readme: run|serve|skip --> marker: {unmarked}"
    assert all(b.reason for b in BLOCKS if b.kind == "skip"), "a skipped block must say why"
    assert sum(b.kind == "run" for b in BLOCKS) >= 5  # the test runs the README, not nothing


def test_the_parser_reads_markers_expectations_and_reasons():
    text = (
        'x\n<!-- readme: run, expect "a b" "c" -->\n```bash\necho a b c\n```\n\n'
        "<!-- readme: skip (needs a GPU) -->\n\n```python\nimport torch\n```\n```text\nnot code\n```\n```sh\nls\n```\n"
    )
    run, skip, bare = readme_blocks(text)
    assert (run.kind, run.expect, run.code, run.line) == ("run", ["a b", "c"], "echo a b c\n", 3)
    assert (skip.kind, skip.reason, skip.lang) == ("skip", "needs a GPU", "python")
    assert (bare.kind, bare.lang) == ("", "sh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Place:
    home: Path
    work: Path
    tmp: Path
    port: int

    def substitute(self, code: str) -> str:
        for old, new in (
            (".venv/bin/python", sys.executable),
            ('device="cuda"', 'device="cpu"'),
            ('dtype="bfloat16"', 'dtype="float32"'),
            ("/tmp/", f"{self.tmp}/"),
            ("8000", str(self.port)),
        ):
            code = code.replace(old, new)
        return code

    def env(self) -> dict:
        return {**os.environ, "HOME": str(self.home), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}

    def command(self, block: Block) -> list[str]:
        code = self.substitute(block.code)
        return [sys.executable, "-c", code] if block.lang == "python" else ["bash", "-euo", "pipefail", "-c", code]


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Place:
    from PIL import Image

    from hovle.default_model.folder import copy_default_model

    base = tmp_path_factory.mktemp("readme")
    home, work, tmp = base / "home", base / "work", base / "tmp"
    for d in (home / "pictures", work, tmp):
        d.mkdir(parents=True)
    copy_default_model(home / "models" / "HoVLE", "hovle")
    copy_default_model(home / "models" / "HoVLE-HD", "hovle-hd")
    example = Image.open(ROOT / "hovle" / "data" / "example.png").convert("RGB")
    example.save(work / "photo.jpg", quality=95)
    for name in ("photo.png", "house.png", "tree.png"):
        example.save(work / name)
    return Place(home, work, tmp, _free_port())


class Server:
    """A `serve` block running in the background; its output is collected by a reader thread."""

    def __init__(self, place: Place, block: Block):
        self.out: list[str] = []
        self.proc = subprocess.Popen(
            place.command(block),
            cwd=place.work,
            env=place.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=lambda: self.out.extend(self.proc.stdout), daemon=True).start()
        self.ready(place.port, block.expect)

    def ready(self, port: int, expect: list[str], timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader thread take the last lines
                pytest.fail(f"the README's server exited with {self.proc.returncode}:\n{self.text[-3000:]}")
            if all(e in self.text for e in expect):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        if r.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.25)
        self.stop()
        pytest.fail(f"the README's server did not come up within {timeout:.0f} s:\n{self.text[-3000:]}")

    @property
    def text(self) -> str:
        return "".join(self.out)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(place):
    serving = [b for b in BLOCKS if b.kind == "serve"]
    assert len(serving) == 1, "the test knows how to run one serve block"
    srv = Server(place, serving[0])
    yield srv
    srv.stop()


def _needs_server(block: Block) -> bool:
    return "127.0.0.1:8000" in block.code or "localhost:8000" in block.code


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind in ("run", "serve")], ids=lambda b: b.id)
def test_readme_block_runs(block, place, request):
    if block.kind == "serve":
        srv = request.getfixturevalue("server")
        assert all(e in srv.text for e in block.expect)
        return
    if _needs_server(block):
        request.getfixturevalue("server")
    out = subprocess.run(
        place.command(block), cwd=place.work, env=place.env(), capture_output=True, text=True, timeout=600
    )
    shown = f"README line {block.line} ({block.lang}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert out.returncode == 0, shown
    missing = [e for e in block.expect if e not in out.stdout]
    assert not missing, f"expected {missing} in the output of {shown}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "skip"], ids=lambda b: b.id)
def test_readme_block_that_cannot_run_here(block):
    pytest.skip(f"README line {block.line}: {block.reason}")


def test_substitutions_touch_only_what_the_docstring_names():
    p = Place(Path("/h"), Path("/w"), Path("/t"), 1234)
    code = 'x = Engine.from_pretrained("~/m", device="cuda", dtype="bfloat16")\n.venv/bin/python /tmp/a :8000'
    assert p.substitute(code) == (
        f'x = Engine.from_pretrained("~/m", device="cpu", dtype="float32")\n{sys.executable} /t/a :1234'
    )
    assert shutil.which("bash"), "the README's shell blocks run under bash"
