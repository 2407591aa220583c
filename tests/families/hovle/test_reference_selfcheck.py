"""Self-checks of hovle/reference/model.py on a tiny random checkpoint (CPU, fp32), against hand-written plain torch."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hovle.reference.model import EMB, LLM, ReferenceHoVLE, pixel_shuffle

CTX, VOCAB, HID, TILE = 290, 300, 64, 56
ATOL = RTOL = 1e-4


def tiny_config(loc="pre", normalize=False, emb_scaling=None, emb_max_pos=64) -> dict:
    layer = dict(hidden_size=HID, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    layer.update(num_key_value_heads=2, rms_norm_eps=1e-5)
    emb = dict(layer, rope_theta=10000.0, rope_scaling=emb_scaling, max_position_embeddings=emb_max_pos)
    emb.update(image_size=TILE, patch_size=14, num_channels=3, pixel_shuffle_loc=loc, img_context_token_id=CTX)
    emb.update(llm_vocab_size=VOCAB, llm_hidden_size=HID, downsample_ratio=0.5)
    llm = dict(layer, vocab_size=VOCAB, rope_theta=1e6, max_position_embeddings=4096)
    llm.update(rope_scaling={"type": "dynamic", "factor": 2.0})
    top = dict(downsample_ratio=0.5, normalize_encoder_output=normalize, force_image_size=TILE)
    return dict(top, embedding_config=emb, llm_config=llm)


def tiny_tensors(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=None):
        return torch.randn(*shape, generator=gen) * (shape[-1] ** -0.5 if scale is None else scale)

    t = {}
    for prefix, c in ((EMB + "encoder.", cfg["embedding_config"]), (LLM + "model.layers.", cfg["llm_config"])):
        h, kv, inter = c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
        for i in range(c["num_hidden_layers"]):
            p = f"{prefix}{i}."
            t[p + "attention.wqkv.weight"] = r((h + 2 * kv) * (HID // h), HID)
            t[p + "attention.wo.weight"] = r(HID, HID)
            t[p + "feed_forward.w1.weight"], t[p + "feed_forward.w3.weight"] = r(inter, HID), r(inter, HID)
            t[p + "feed_forward.w2.weight"] = r(HID, inter)
            t[p + "attention_norm.weight"], t[p + "ffn_norm.weight"] = 1 + r(HID, scale=0.2), 1 + r(HID, scale=0.2)
    v = EMB + "vision_embeddings."
    t[v + "patch_embedding.weight"], t[v + "patch_embedding.bias"] = r(HID, 3, 14, 14, scale=0.1), r(HID, scale=0.1)
    t[v + "position_embedding"], t[v + "class_embedding"] = r(1, 17, HID, scale=0.5), r(1, 1, HID)
    t[EMB + "llm_text_embeddings.weight"] = r(VOCAB, HID, scale=1.0)
    t[EMB + "pixel_shuffle_proj.0.weight"], t[EMB + "pixel_shuffle_proj.0.bias"] = r(HID, 4 * HID), r(HID, scale=0.1)
    t[EMB + "pixel_shuffle_proj.2.weight"], t[EMB + "pixel_shuffle_proj.2.bias"] = r(HID, HID), r(HID, scale=0.1)
    t[LLM + "model.tok_embeddings.weight"], t[LLM + "output.weight"] = r(VOCAB, HID), r(VOCAB, HID)
    t[LLM + "model.norm.weight"] = 1 + r(HID, scale=0.2)
    return t


def write_checkpoint(path, cfg: dict, tensors: dict, shards: int = 1):
    (path / "config.json").write_text(json.dumps(cfg))
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"))
        return
    names, weight_map = sorted(tensors), {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in names[s::shards]}, str(path / file))
        weight_map.update({n: file for n in names[s::shards]})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture
def make(tmp_path):
    """make(**tiny_config kwargs) -> (config, tensors, fresh-reference factory)."""

    def build(**kw):
        cfg = tiny_config(**kw)
        tensors = tiny_tensors(cfg)
        write_checkpoint(tmp_path, cfg, tensors)
        return cfg, tensors, lambda: ReferenceHoVLE.from_dir(str(tmp_path))

    return build


def prompt(n_tiles: int, per_tile: int) -> list[int]:
    return [1, 5, 288] + [CTX] * (per_tile * n_tiles) + [289, 7, 9, 11, 13]


# ---- hand-written plain-torch forward (fp32) --------------------------------------------------------------------
def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x, pos, base):
    """rotate_half RoPE on (heads, L, D); base is a per-row (L,) tensor (dynamic NTK may differ per row)."""
    d = x.shape[-1]
    ang = pos.float()[:, None] / base[:, None] ** (torch.arange(0, d, 2).float() / d)  # (L, D/2)
    ang = torch.cat([ang, ang], -1)  # (L, D)
    return x * ang.cos() + torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1) * ang.sin()


def hand_stack(t, prefix, c, x, pos, allowed, base):
    """InternLM2 layers over x (L, C); allowed (L, L) bool: query row may attend key column."""
    h, kv, eps, n = c["num_attention_heads"], c["num_key_value_heads"], c["rms_norm_eps"], x.shape[0]
    d, rep = HID // h, h // kv
    for i in range(c["num_hidden_layers"]):
        w = {k[len(f"{prefix}{i}.") :]: v for k, v in t.items() if k.startswith(f"{prefix}{i}.")}
        y = rms(x, w["attention_norm.weight"], eps)
        qkv = (y @ w["attention.wqkv.weight"].T).view(n, kv, rep + 2, d)  # (L, Hkv, rep+2, D)
        q = rope(qkv[:, :, :rep].reshape(n, h, d).transpose(0, 1), pos, base)  # (H, L, D), head g*rep+j
        k = rope(qkv[:, :, rep].transpose(0, 1), pos, base).repeat_interleave(rep, 0)  # (H, L, D)
        v = qkv[:, :, rep + 1].transpose(0, 1).repeat_interleave(rep, 0)  # (H, L, D)
        att = (q @ k.transpose(1, 2) / math.sqrt(d)).masked_fill(~allowed, float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(0, 1).reshape(n, h * d) @ w["attention.wo.weight"].T  # (L, H*D)
        y = rms(x, w["ffn_norm.weight"], eps)
        gate, up = F.silu(y @ w["feed_forward.w1.weight"].T), y @ w["feed_forward.w3.weight"].T
        x = x + (gate * up) @ w["feed_forward.w2.weight"].T
    return x


def hand_vision(t, pv):
    """Conv as an explicit patch matmul; (n, 3, 56, 56) -> (n, 16, C)."""
    n, g = pv.shape[0], TILE // 14
    cols = pv.reshape(n, 3, g, 14, g, 14).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, -1)  # (n, P, 3*14*14)
    w = t[EMB + "vision_embeddings.patch_embedding.weight"].reshape(HID, -1)  # (C, 3*14*14)
    v = EMB + "vision_embeddings."
    return cols @ w.T + t[v + "patch_embedding.bias"] + t[v + "position_embedding"][0, 1:]


def hand_shuffle(x):
    """docs/hovle.md §2.2 formula: out[t = (r//2)*(g/2) + s//2, (r%2)*2C + (s%2)*C + c] = x[r*g + s, c]."""
    n, p, c = x.shape
    g = math.isqrt(p)
    out = torch.full((n, p // 4, 4 * c), float("nan"))
    for r in range(g):
        for s in range(g):
            off = (r % 2) * 2 * c + (s % 2) * c
            out[:, (r // 2) * (g // 2) + s // 2, off : off + c] = x[:, r * g + s]
    return out


def hand_proj(t, x):
    x = F.gelu(x @ t[EMB + "pixel_shuffle_proj.0.weight"].T + t[EMB + "pixel_shuffle_proj.0.bias"])
    return x @ t[EMB + "pixel_shuffle_proj.2.weight"].T + t[EMB + "pixel_shuffle_proj.2.bias"]


def hand_llm(t, cfg, x):
    """LLM logits (N, V) for LLM inputs x (N, C), positions 0..N-1, causal."""
    lc, n = cfg["llm_config"], x.shape[0]
    if cfg["normalize_encoder_output"]:
        x = x / x.norm(dim=-1, keepdim=True)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    h = hand_stack(t, LLM + "model.layers.", lc, x, torch.arange(n), causal, torch.full((n,), lc["rope_theta"]))
    return rms(h, t[LLM + "model.norm.weight"], lc["rms_norm_eps"]) @ t[LLM + "output.weight"].T


def hand_prefill(t, cfg, ids_emb, ids_llm, pv, emb_base=None):
    ec, e_ids, l_ids = cfg["embedding_config"], torch.tensor(ids_emb), torch.tensor(ids_llm)
    x = t[EMB + "llm_text_embeddings.weight"][e_ids].clone()  # (L, C)
    if pv is not None:
        feats = hand_vision(t, pv)
        feats = hand_proj(t, hand_shuffle(feats)) if ec["pixel_shuffle_loc"] == "pre" else feats
        x[e_ids == CTX] = feats.reshape(-1, HID)  # (n*T, C)
    n = len(ids_emb)
    base = torch.full((n,), emb_base or ec["rope_theta"])
    h = hand_stack(t, EMB + "encoder.", ec, x, torch.arange(n), torch.ones(n, n, dtype=torch.bool).tril(), base)
    if ec["pixel_shuffle_loc"] == "post":
        x = torch.full((len(ids_llm), HID), float("nan"))
        x[l_ids != CTX] = h[e_ids != CTX]
        if pv is not None:
            x[l_ids == CTX] = hand_proj(t, hand_shuffle(h[e_ids == CTX].reshape(len(pv), -1, HID))).reshape(-1, HID)
        h = x
    return hand_llm(t, cfg, h), h


def ntk_base(theta, factor, length, max_pos, d=16):
    """InternLM2 dynamic NTK base (fp64 Python math, as the original); unscaled up to max_pos."""
    if length <= max_pos:
        return theta
    return theta * ((factor * length / max_pos) - (factor - 1)) ** (d / (d - 2))


# ---- tests ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix,stack", [(EMB + "encoder.1.", "emb"), (LLM + "model.layers.0.", "llm")])
def test_wqkv_split_uses_grouped_rows(make, prefix, stack):
    _, t, fresh = make()
    attn = getattr(fresh(), stack).layers[int(prefix[-2])].self_attn
    wqkv, d, n_kv, n_rep = t[prefix + "attention.wqkv.weight"], 16, 2, 2
    q_rows = [g * (n_rep + 2) * d + j * d + i for g in range(n_kv) for j in range(n_rep) for i in range(d)]
    k_rows = [g * (n_rep + 2) * d + n_rep * d + i for g in range(n_kv) for i in range(d)]
    v_rows = [g * (n_rep + 2) * d + (n_rep + 1) * d + i for g in range(n_kv) for i in range(d)]
    x = torch.randn(1, 5, HID)
    for proj, rows in ((attn.q_proj, q_rows), (attn.k_proj, k_rows), (attn.v_proj, v_rows)):
        assert torch.equal(proj.weight, wqkv[rows])
        torch.testing.assert_close(proj(x), x @ wqkv[rows].T, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("grid,channels", [(4, 5), (6, 3), (32, 8)])
def test_pixel_shuffle_matches_formula(grid, channels):
    x = torch.randn(3, grid * grid, channels)
    assert torch.equal(pixel_shuffle(x, 0.5), hand_shuffle(x))


@pytest.mark.parametrize("loc", ["pre", "post"])
def test_incremental_decode_matches_recompute(make, loc):
    _, _, fresh = make(loc=loc)
    gen = torch.Generator().manual_seed(7)  # the same draws whatever ran before
    pv, steps = torch.randn(2, 3, TILE, TILE, generator=gen), 4
    ids_emb, ids_llm = prompt(2, 4 if loc == "pre" else 16), prompt(2, 4)
    tokens, step_logits = fresh().greedy(ids_emb, ids_llm, pv, steps)
    assert len(tokens) == len(step_logits) == steps
    for k in range(steps):
        full = fresh().prefill(ids_emb + tokens[:k], ids_llm + tokens[:k], pv, generated=k)
        assert full.shape == (len(ids_llm) + k, VOCAB) and full.dtype == torch.float32
        torch.testing.assert_close(step_logits[k], full[-1], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("normalize", [False, True])
def test_text_prefill_matches_hand_forward(make, normalize):
    cfg, t, fresh = make(normalize=normalize)
    ids = [1, 17, 42, 99, 7, 250, 3, 3, 12]
    expected, _ = hand_prefill(t, cfg, ids, ids, None)
    torch.testing.assert_close(fresh().prefill(ids, ids, None), expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("loc", ["pre", "post"])
def test_image_prefill_matches_hand_forward(make, loc):
    cfg, t, fresh = make(loc=loc)
    pv = torch.randn(2, 3, TILE, TILE)
    ids_emb, ids_llm = prompt(2, 4 if loc == "pre" else 16), prompt(2, 4)
    expected, _ = hand_prefill(t, cfg, ids_emb, ids_llm, pv)
    torch.testing.assert_close(fresh().prefill(ids_emb, ids_llm, pv), expected, atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="IMG_CONTEXT"):
        fresh().prefill(ids_emb, ids_llm, pv[:1])


def test_dynamic_ntk_rescales_like_internlm2(make):
    cfg, t, fresh = make(emb_scaling={"type": "dynamic", "factor": 2.0}, emb_max_pos=8)
    ids = [1, 17, 42, 99, 7, 250, 3, 3, 12, 60, 61, 62, 63]  # 13 > max_position_embeddings = 8
    ref = fresh()
    expected, _ = hand_prefill(t, cfg, ids, ids, None, emb_base=ntk_base(1e4, 2.0, len(ids), 8))
    torch.testing.assert_close(ref.prefill(ids, ids, None), expected, atol=ATOL, rtol=RTOL)
    ref.decode_step(5)
    inv = 1.0 / torch.tensor(ntk_base(1e4, 2.0, len(ids) + 1, 8)) ** (torch.arange(0, 16, 2).double() / 16)
    torch.testing.assert_close(ref.emb.rotary.inv_freq.double(), inv, atol=0, rtol=1e-6)


@pytest.mark.parametrize("emb_max_pos", [64, 8])
def test_hd_quirk_decode_matches_hand(make, emb_max_pos):
    scaling = {"type": "dynamic", "factor": 2.0}
    cfg, t, fresh = make(loc="post", emb_scaling=scaling, emb_max_pos=emb_max_pos)
    ids, steps = [1, 17, 42, 99, 7, 250, 3, 3, 12, 60], 3
    ref = fresh()
    tokens, step_logits = ref.greedy(ids, ids, None, steps, hd_decode="reference-quirk")
    assert ref.emb_cache.get_seq_length() == len(ids)
    _, llm_in = hand_prefill(t, cfg, ids, ids, None, emb_base=ntk_base(1e4, 2.0, len(ids), emb_max_pos))
    n, ec = len(ids), cfg["embedding_config"]
    allowed = torch.ones(n + 1, n + 1, dtype=torch.bool).tril()
    allowed[n, n] = False  # the quirk token sees the N_hd prompt keys only
    for k in range(1, steps):
        x = t[EMB + "llm_text_embeddings.weight"][torch.tensor(ids + [tokens[k - 1]])]  # (N+1, C)
        base = torch.tensor([ntk_base(1e4, 2.0, n, emb_max_pos)] * n + [ntk_base(1e4, 2.0, n + k, emb_max_pos)])
        pos = torch.tensor([*range(n), n - 1])
        llm_in = torch.cat([llm_in, hand_stack(t, EMB + "encoder.", ec, x, pos, allowed, base)[-1:]])
        torch.testing.assert_close(step_logits[k], hand_llm(t, cfg, llm_in)[-1], atol=ATOL, rtol=RTOL)


def test_sharded_checkpoint_and_strict_loading(make, tmp_path):
    cfg, t, fresh = make()
    ids = [1, 17, 42, 99]
    expected = fresh().prefill(ids, ids, None)
    for name, extra in (("sharded", {}), ("extra", {"embedding_model.bogus": torch.ones(2)})):
        (tmp_path / name).mkdir()
        write_checkpoint(tmp_path / name, cfg, {**t, **extra}, shards=3)
    assert torch.equal(ReferenceHoVLE.from_dir(str(tmp_path / "sharded")).prefill(ids, ids, None), expected)
    with pytest.raises(ValueError, match="bogus"):
        ReferenceHoVLE.from_dir(str(tmp_path / "extra"))
    t.pop(LLM + "model.norm.weight")
    with pytest.raises(KeyError, match="model.norm.weight"):
        ReferenceHoVLE(cfg, t)
