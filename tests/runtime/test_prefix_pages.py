"""Prefix sharing at the edges, built from raw ids (so every length is exact): prompts of k*page - 1, k*page and
k*page + 1 tokens run twice, the next turn of a chat that includes the tokens generated before, and many requests
sharing a prefix in a pool too small to keep everything, each compared token for token with a cold engine."""

import dataclasses
import queue

import pytest
import torch

from hovle.generation import SamplingParams
from hovle.runtime.kv_cache import PagedKVCache
from hovle.runtime.output import Done, Failed

PAGE = 16


def _ids(engine, n: int) -> list[int]:
    """A text-only prompt of exactly n LLM tokens (the template's start, then plain text tokens)."""
    req = engine.prepare([{"role": "user", "content": "Tell me about colours and shapes in pictures. " * 8}])
    assert len(req.ids_llm) >= n
    return req.ids_llm[:n]


def _run(engine, ids: list[int], new: int):
    """Generates `new` tokens after the raw prompt `ids` (both stacks: HoVLE's share one sequence)."""
    base = engine.prepare([{"role": "user", "content": "x"}])
    req = dataclasses.replace(base, ids_llm=list(ids), ids_emb=list(ids))
    events = queue.SimpleQueue()
    [handle] = engine.submit([req], SamplingParams(max_new_tokens=new, ignore_eos=True), events)
    while True:
        event = events.get()
        if isinstance(event, Failed):
            raise event.error
        if isinstance(event, Done):
            return handle.result()


@pytest.fixture(scope="module")
def engines(make_engine):
    options = {"kv_page_size": PAGE, "max_context": 2048}
    return make_engine("pre", **options), make_engine("pre", prefix_caching=False, **options)


@pytest.mark.parametrize("k, extra", [(2, -1), (2, 0), (2, 1), (3, 0)])
def test_a_repeated_prompt_at_a_page_boundary_reuses_whole_pages_and_answers_the_same(engines, k, extra):
    warm, cold = engines
    ids = _ids(warm, k * PAGE + extra)
    first, second = _run(warm, ids, 6), _run(warm, ids, 6)
    assert first.token_ids == second.token_ids == _run(cold, ids, 6).token_ids
    assert second.cached_tokens == (len(ids) - 1) // PAGE * PAGE  # every whole page but the one of the last token


def test_the_next_turn_reuses_the_pages_its_previous_answer_filled(engines):
    warm, cold = engines
    prompt = _ids(warm, 20)
    answer = _run(warm, prompt, 30).token_ids  # decoding fills positions 20..48: pages 1 and 2 complete
    turn = prompt + answer + _ids(warm, 7)[1:]
    again = _run(warm, turn, 5)
    assert again.cached_tokens == (20 + 30 - 1) // PAGE * PAGE == 48  # not only the prompt's one page
    assert again.token_ids == _run(cold, turn, 5).token_ids


def test_shared_prefixes_in_a_tight_pool_answer_as_a_cold_engine(make_engine):
    """Eight requests with two common prefixes, four at a time, in a pool of about 30 pages: cached pages are evicted
    and handed out again while others share them; every answer equals a cold engine's."""
    cold = make_engine("pre", kv_page_size=PAGE, prefix_caching=False)
    per_token = sum(
        PagedKVCache.bytes_per_token(s.num_layers, s.num_kv_heads, s.head_dim, torch.float32) for s in cold.model.stacks
    )
    tight = make_engine("pre", kv_page_size=PAGE, kv_cache_memory=30 * PAGE * per_token, max_batch=4)
    base = _ids(tight, 60)
    prompts = [base[: 40 + (i % 2) * 9] + base[50 + i : 52 + i] for i in range(8)]
    events = queue.SimpleQueue()
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    reqs = [
        dataclasses.replace(tight.prepare([{"role": "user", "content": "x"}]), ids_llm=p, ids_emb=p) for p in prompts
    ]
    handles = tight.submit(reqs, params, events)
    done = 0
    while done < len(handles):
        event = events.get()
        assert not isinstance(event, Failed), event.error
        done += isinstance(event, Done)
    got = [h.result().token_ids for h in handles]
    assert got == [_run(cold, p, 12).token_ids for p in prompts]
    assert tight.stats()["prefix_hit_requests"] > 0 and tight.stats()["kv_pages_total"][1] < 40
