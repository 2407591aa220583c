"""Measured selection between equivalent implementations (hovle/kernels/autoselect.py), with an injected timer: the
fastest per key is kept and measured only once, failing candidates are left out, a forced choice wins, and
without a measurable device the first (the safe default) runs. And the engine's fused path (norm_linear) is the
one that ran when chosen, with the same tokens as the reference."""

import pytest
import torch

from hovle.kernels.autoselect import Choice

pytestmark = pytest.mark.gpu  # make gpu-check runs these


class FakeTimer:
    def __init__(self, costs: dict):
        self.costs, self.calls = costs, 0

    def __call__(self, fn):
        self.calls += 1
        return self.costs[fn()]


def _choice(costs):
    timer = FakeTimer(costs)
    cands = {"a": lambda x: "a", "b": lambda x: "b", "bad": lambda x: 1 / 0}
    return Choice("test", cands, timer), timer


def test_the_fastest_per_key_is_measured_once_and_kept():
    choice, timer = _choice({"a": 2.0, "b": 1.0})
    assert choice.pick(("k", 1), (None,), {}, measurable=True) == "b"
    assert choice.pick(("k", 1), (None,), {}, measurable=True) == "b" and timer.calls == 2  # one timing per candidate
    timer.costs = {"a": 0.5, "b": 1.0}
    assert choice.pick(("k", 2), (None,), {}, measurable=True) == "a"  # another key, measured on its own
    assert set(choice.log[("k", 1)]) == {"a", "b"}  # the raising candidate is not a choice


def test_a_failing_candidate_is_reported_with_its_exception(capsys):
    from hovle.kernels import autoselect

    choice, _ = _choice({"a": 2.0, "b": 1.0})
    choice.name = "report_test"
    assert choice.pick(("k", 3), (None,), {}, measurable=True) == "b"
    assert choice.failures == {("k", 3): {"bad": "ZeroDivisionError: division by zero"}}
    assert "candidate 'bad' left out (ZeroDivisionError: division by zero)" in capsys.readouterr().err
    summary = autoselect.summary()
    assert summary["report_test"] == {"('k', 3)": "b"}
    assert summary["report_test failed"] == {"('k', 3)": "bad: ZeroDivisionError: division by zero"}


def test_a_cuda_fault_is_raised_not_skipped():
    """A CUDA error poisons the context: every later candidate would fail too, so it must surface at once."""

    def fault(x):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    choice = Choice("fault_test", {"a": lambda x: "a", "fault": fault}, FakeTimer({"a": 1.0}))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        choice.pick("k", (None,), {}, measurable=True)


def test_no_measurement_without_a_device_and_forced_choices(monkeypatch):
    choice, timer = _choice({"a": 2.0, "b": 1.0})
    assert choice.pick("k", (None,), {}, measurable=False) == "a" and timer.calls == 0
    monkeypatch.setenv("HOVLE_CHOOSE_TEST", "b")
    assert choice.pick("k", (None,), {}, measurable=True) == "b" and timer.calls == 0
    monkeypatch.setenv("HOVLE_CHOOSE_TEST", "nope")
    with pytest.raises(ValueError, match="expected one of"):
        choice.pick("k", (None,), {}, measurable=True)


def test_engine_runs_the_fused_norm_linear_when_chosen(tmp_path, monkeypatch):
    """The Triton backend with the fused kernel forced: it really runs (counted), and greedy tokens equal the
    reference model's (interpreter on the CPU, natively on a GPU)."""
    from hovle import Engine
    from hovle.default_model.cases import make_checkpoint, noise_image
    from hovle.kernels import norm_linear as nl
    from hovle.kernels._triton import HAS_TRITON, triton_usable
    from hovle.reference.model import ReferenceHoVLE

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not (HAS_TRITON and triton_usable(device)):
        pytest.skip("Triton cannot run here")
    monkeypatch.setenv("HOVLE_CHOOSE_NORM_LINEAR", "fused")
    path = make_checkpoint(tmp_path, "pre")
    eng = Engine.from_pretrained(path, device=device, dtype=torch.float32, backend="triton", cuda_graphs=False)
    image = noise_image(90, 60, 2)
    result = eng.generate("Describe.", image, max_num=2, max_new_tokens=6, ignore_eos=True)
    assert nl._CHOICE.calls["fused"] > 0
    req = eng.prepare([{"role": "user", "content": "Describe."}], [image], 2)
    tokens, _ = ReferenceHoVLE.from_dir(str(path)).greedy(req.ids_emb, req.ids_llm, req.pixel_values, 6)
    assert result.token_ids == tokens


CANDIDATES = ["triton", "sdpa", "sdpa-cudnn", "sdpa-flash", "flash-attn"]


@pytest.mark.parametrize("candidate", CANDIDATES)
def test_prefill_attention_candidates_agree_with_the_reference(candidate, monkeypatch):
    """attention_auto with a fresh single sequence, each candidate forced, against attention_ref in fp64: within
    2x the error of the same-dtype torch reference (+1e-5). On the CPU in fp32 (the candidates that run there); on
    a GPU in bf16 at the model's head shape, every candidate the device offers (cuDNN and flash included)."""
    from hovle.kernels import attention_select
    from hovle.kernels._triton import HAS_TRITON, triton_usable
    from hovle.kernels.attention import attention_ref
    from hovle.kernels.attention_select import attention_auto
    from hovle.kernels.rotary import rotate_ref
    from tests.kernels.support import attention_fp64, attention_inputs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not (HAS_TRITON and triton_usable(device)):
        pytest.skip("Triton cannot run here")
    if candidate not in attention_select._candidates() or (device == "cpu" and candidate not in ("triton", "sdpa")):
        pytest.skip(f"{candidate} does not run on {device} here")
    monkeypatch.setenv("HOVLE_CHOOSE_PREFILL_ATTENTION", candidate)
    gpu = device == "cuda"
    dtype, (hq, hkv, d, t) = (torch.bfloat16, (16, 8, 128, 300)) if gpu else (torch.float32, (4, 2, 64, 37))
    args, (_, dense_v) = attention_inputs([t], [0], hq, hkv, d, dtype, True, device, page=16)
    q, k_cache, v_cache, cu, prefix, tables, cos, sin = args
    # This forward's keys unrotated (new_kv, as the model passes them) and, rotated as kv_store stores them, in the
    # cache that the paged kernel and the reference read.
    k_new = torch.randn(t, hkv, d, generator=torch.Generator().manual_seed(7)).to(device, dtype)
    k_rot = rotate_ref(k_new, cos, sin)
    pos = torch.arange(t, device=device)
    k_cache[tables[0, pos // 16].long(), :, pos % 16] = k_rot  # (T, Hkv, D) into the pages
    v_new = dense_v[0].transpose(0, 1)  # (Hkv, T, D) -> (T, Hkv, D)
    out = attention_auto(q, k_cache, v_cache, cu, prefix, tables, None, cos, sin, t, new_kv=(k_new, v_new))
    assert attention_select._CHOICE.calls[candidate] > 0
    exact = attention_fp64(q, [k_rot.transpose(0, 1)], [dense_v[0]], cu, prefix, cos, sin)
    ref = attention_ref(q, k_cache, v_cache, cu, prefix, tables, None, cos, sin)
    err, ref_err = (float((x.double() - exact).abs().max()) for x in (out, ref))  # NaN fails below
    assert err <= 2 * ref_err + 1e-5, f"{candidate}: error {err:.3g} vs PyTorch's {ref_err:.3g}"


def test_engine_prefill_through_sdpa_when_chosen(tmp_path, monkeypatch):
    from hovle import Engine
    from hovle.default_model.cases import make_checkpoint, noise_image
    from hovle.kernels import attention_select
    from hovle.kernels._triton import HAS_TRITON, triton_usable
    from hovle.reference.model import ReferenceHoVLE

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not (HAS_TRITON and triton_usable(device)):
        pytest.skip("Triton cannot run here")
    monkeypatch.setenv("HOVLE_CHOOSE_PREFILL_ATTENTION", "sdpa")
    path = make_checkpoint(tmp_path, "post", "hovle-hd")
    eng = Engine.from_pretrained(path, device=device, dtype=torch.float32, backend="triton", cuda_graphs=False)
    image = noise_image(120, 60, 3)
    req = eng.prepare([{"role": "user", "content": "Describe."}], [image], 3)
    ours = eng.prompt_logits(req).cpu()
    assert attention_select._CHOICE.calls["sdpa"] > 0
    theirs = ReferenceHoVLE.from_dir(str(path)).prefill(req.ids_emb, req.ids_llm, req.pixel_values)
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-4
