"""The command line: every input error ends as one line on stderr and exit status 2, never a traceback."""

import os
import subprocess
import sys

import pytest

from hovle.__main__ import main
from hovle.default_model.cases import make_checkpoint, noise_image


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("cli"), "pre")


def _fails_in_one_line(capsys, argv: list[str], words: str) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], err
    assert "Traceback" not in err


def test_bad_option_values(capsys, ckpt, tmp_path):
    gen = ["generate", "--model", str(ckpt), "--prompt", "Hi.", "--max-new-tokens", "2"]
    cases = [
        (gen + ["--backend", "bogus"], "invalid choice: 'bogus'"),
        (gen + ["--device", "tpu"], "device 'tpu'"),
        (gen + ["--dtype", "int8"], "dtype 'int8'"),
        (gen + ["--max-num", "1000000"], "max_num = 1000000"),
        (gen + ["--max-new-tokens", "lots"], "invalid int value: 'lots'"),
        (gen + ["--temperature", "-2"], "temperature = -2.0"),
        (gen + ["--max-tiles", "5000"], "hard cap is 128"),
        (["generate", "--prompt", "Hi."], "--model"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ]
    for argv, words in cases:
        _fails_in_one_line(capsys, argv, words)


def test_bad_files(capsys, ckpt, tmp_path, monkeypatch):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    gen = ["generate", "--model", str(ckpt), "--prompt", "Hi.", "--max-new-tokens", "2"]
    _fails_in_one_line(capsys, gen + ["--image", str(tmp_path / "missing.png")], "missing.png")
    _fails_in_one_line(capsys, gen + ["--image", str(broken)], "broken.png")
    _fails_in_one_line(capsys, ["generate", "--model", str(tmp_path), "--prompt", "Hi."], "config.json")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _fails_in_one_line(capsys, ["write-default", "--random", "--out", str(blocker / "sub")], "a-file")
    import pathlib

    real = pathlib.Path.read_text

    def denied(self, *a, **kw):  # root reads anything, so the permission error is simulated
        if self.name == "config.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "read_text", denied)
    _fails_in_one_line(capsys, gen, "Permission denied")


def _run(args: list, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hovle", *args], capture_output=True, timeout=300, env=env)


def test_invalid_utf8_prompt_and_triton_without_a_gpu(ckpt):
    out = _run([b"generate", b"--model", str(ckpt).encode(), b"--prompt", b"caf\xe9 \xff", b"--max-new-tokens", b"2"])
    err = out.stderr.decode()
    assert out.returncode == 2 and err.count("\n") == 1 and "not valid Unicode" in err, err
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    import torch

    if not torch.cuda.is_available():
        out = _run(["generate", "--model", str(ckpt), "--backend", "triton", "--prompt", "Hi."], env)
        err = out.stderr.decode()
        assert out.returncode == 2 and err.count("\n") == 1 and "backend 'triton'" in err, err


def test_generate_runs_and_prints_the_prompt_and_tiles(ckpt, tmp_path):
    img = tmp_path / "img.png"
    noise_image(120, 80, 3).save(img)
    out = _run(
        [
            "generate",
            "--model",
            str(ckpt),
            "--image",
            str(img),
            "--prompt",
            "Describe.",
            "--max-new-tokens",
            "6",
            "--stream",
            "--max-num",
            "2",
        ]
    )
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr.decode()
    assert "2x1 grid" in text and "tokens: 6 generated" in text and "<IMG_CONTEXT>x" in text


def test_a_bad_sampling_option_fails_before_the_model_loads(capsys, ckpt, monkeypatch):
    from hovle import engine

    def no_loading(*a, **kw):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(engine.Engine, "from_pretrained", no_loading)
    gen = ["generate", "--model", str(ckpt), "--prompt", "Hi.", "--temperature", "-1"]
    _fails_in_one_line(capsys, gen, "temperature = -1.0")
    _fails_in_one_line(capsys, gen[:-2] + ["--top-p", "0"], "top_p")


def test_one_token_has_no_decode_rate_and_one_preprocessing_time(ckpt, tmp_path, monkeypatch):
    img = tmp_path / "img.png"
    noise_image(64, 64, 3).save(img)
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "m").symlink_to(ckpt)
    (home / "img.png").write_bytes(img.read_bytes())
    env = {**os.environ, "HOME": str(home)}
    base = ["generate", "--model", "~/models/m", "--image", "~/img.png", "--prompt", "Describe."]
    one, many = (_run(base + ["--max-new-tokens", n], env) for n in ("1", "4"))
    for out in (one, many):
        assert out.returncode == 0, out.stderr.decode()  # `~` is expanded in --model and --image
        assert out.stdout.decode().count(" ms)") == 1  # the image's one preprocessing time
    assert "tokens: 1 generated" in one.stdout.decode() and "tokens/s" not in one.stdout.decode()
    assert "decode" in many.stdout.decode() and "tokens/s over 3" in many.stdout.decode()


def test_serve_refuses_bad_options_before_loading(capsys, ckpt, tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    from hovle import engine

    def no_loading(*a, **kw):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(engine.Engine, "from_pretrained", no_loading)
    serve = ["serve", "--model", str(ckpt)]
    _fails_in_one_line(capsys, serve + ["--allowed-local-media-path", str(tmp_path / "nope")], "nope: no such folder")
    _fails_in_one_line(capsys, serve + ["--max-queue", "0"], "--max-queue 0")


def test_xcomposer_write_default_and_generate(tmp_path, capsys):
    _fails_in_one_line(
        capsys, ["write-default", "--variant", "xcomposer2-4khd", "--out", str(tmp_path / "x")], "add --random"
    )
    out = _run(["write-default", "--variant", "xcomposer2-4khd", "--random", "--out", str(tmp_path / "xc")])
    assert out.returncode == 0, out.stderr.decode()
    img = tmp_path / "img.png"
    noise_image(700, 350, 5).save(img)
    gen = ["generate", "--model", str(tmp_path / "xc"), "--image", str(img), "--prompt", "What?", "--max-num", "2"]
    out = _run(gen + ["--max-new-tokens", "3"])
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr.decode()
    assert "(InternLM-XComposer2-4KHD)" in text and "image 0: 1x2 crops of 336px + global view, 457 LLM tokens" in text
    assert "tokens: 3 generated" in text or "generated (stop)" in text
