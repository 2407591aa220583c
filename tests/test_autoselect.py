"""Measured selection between equivalent implementations (hovle/kernels/autoselect.py), with an injected timer: the
fastest per key is kept and measured only once, failing candidates are left out, a forced choice wins, and
without a measurable device the first (the safe default) runs. And the engine's fused path (norm_linear) is the
one that ran when chosen, with the same tokens as the reference."""

import pytest
import torch

from hovle.kernels.autoselect import Choice


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
    from hovle.kernels import norm_linear as nl
    from hovle.kernels._triton import HAS_TRITON, triton_usable
    from hovle.reference.model import ReferenceHoVLE
    from hovle.tooling.cases import make_checkpoint, noise_image

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


@pytest.mark.parametrize("candidate", ["triton", "sdpa"])
def test_prefill_attention_candidates_agree_with_the_reference(candidate, monkeypatch):
    """attention_auto with a fresh single sequence: each candidate (forced) equals attention_ref; on a GPU the
    cuDNN and flash backends are checked by tests/test_kernel_attention.py's CUDA cases through the same path."""
    from hovle.kernels._triton import HAS_TRITON, triton_usable
    from hovle.kernels.attention import attention_ref
    from hovle.kernels.attention_select import attention_auto
    from tests.test_kernel_attention import make_inputs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not (HAS_TRITON and triton_usable(device)):
        pytest.skip("Triton cannot run here")
    monkeypatch.setenv("HOVLE_CHOOSE_PREFILL_ATTENTION", candidate)
    args, (dense_k, dense_v) = make_inputs([37], [0], 4, 2, 64, torch.float32, True, device, page=16)
    q, k_cache, v_cache, cu, prefix, tables, cos, sin = args
    k_new, v_new = dense_k[0].transpose(0, 1), dense_v[0].transpose(0, 1)  # (Hkv, T, D) -> (T, Hkv, D)
    # the cache holds rotated keys; new_kv carries them unrotated, as the model does: undo the rotation here
    half = k_new.shape[-1] // 2
    c, s_ = cos[:, None, :].float(), sin[:, None, :].float()
    rot = lambda x: torch.cat((-x[..., half:], x[..., :half]), -1)  # noqa: E731
    k_plain = (k_new.float() * c - rot(k_new.float()) * s_).to(k_new.dtype)  # inverse rotation (orthogonal)
    out = attention_auto(q, k_cache, v_cache, cu, prefix, tables, None, cos, sin, 37, new_kv=(k_plain, v_new))
    ref = attention_ref(q, k_cache, v_cache, cu, prefix, tables, None, cos, sin)
    torch.testing.assert_close(out.float(), ref.float(), atol=1e-4, rtol=1e-4)
    from hovle.kernels import attention_select

    assert attention_select._CHOICE.calls[candidate] > 0


def test_engine_prefill_through_sdpa_when_chosen(tmp_path, monkeypatch):
    from hovle import Engine
    from hovle.kernels import attention_select
    from hovle.kernels._triton import HAS_TRITON, triton_usable
    from hovle.reference.model import ReferenceHoVLE
    from hovle.tooling.cases import make_checkpoint, noise_image

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
