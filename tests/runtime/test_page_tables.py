"""Page tables on their own (hovle/runtime/page_tables.py): pages filled while decoding get the hashes a later prompt
of the same ids computes (chained to the pages before them), so the next turn of a chat finds them; admission takes
what is free or nothing; a released sequence gives every page back."""

import queue

from hovle.families import KVStack
from hovle.generation import SamplingParams
from hovle.loaders.config import RopeConfig
from hovle.runtime.page_pool import prefix_hashes
from hovle.runtime.page_tables import PageTables
from hovle.runtime.sequence import Sequence

PAGE = 4
ROPE = RopeConfig(theta=10000.0, head_dim=8, max_position_embeddings=4096)
STACKS = (KVStack("first", 1, 1, 8, ROPE), KVStack("tokens", 1, 1, 8, ROPE))


class Request:
    def __init__(self, ids):
        self.ids, self.image_keys = ids, []

    def stack_ids(self, k):
        return self.ids

    def stack_spans(self, k):
        return []


class Plan:
    """The family's resume rule for one sequence in both stacks (HoVLE's): whole cached pages, never the last
    prompt token."""

    def __init__(self, n):
        self.n = n

    def resume(self, cached, page_size):
        c = min(min(cached), (self.n - 1) // page_size * page_size)
        return c, c


def admitted(tables: PageTables, ids: list[int]) -> Sequence:
    seq = Sequence(Request(ids), SamplingParams(), 8, queue.SimpleQueue(), 2)
    seq.plan = Plan(len(ids))
    assert tables.admit(seq)
    seq.kv_len = [len(ids)] * 2  # the prefill ran
    tables.register_prompt(seq)
    return seq


def decode(tables: PageTables, seq: Sequence, tokens: list[int]) -> None:
    """What the scheduler does per decode step: a page when the position starts one, then the stored position."""
    for token in tokens:
        tables.grow(seq)
        seq.generated.append(token)
        seq.kv_len = [k + 1 for k in seq.kv_len]
        tables.register_decoded(seq)


def test_pages_filled_while_decoding_are_chained_and_found_by_the_next_turn():
    tables = PageTables(STACKS, (16, 16), PAGE, prefix_caching=True)
    prompt = [10, 11, 12, 13, 14, 15]
    first = admitted(tables, prompt)
    decode(tables, first, [20, 21, 22, 23, 24, 25, 26])
    stored = prompt + [20, 21, 22, 23, 24, 25]  # 13 positions stored (the last token's keys come with the next step)
    assert first.kv_len == [13, 13] and first.hashes[1] == prefix_hashes(stored, PAGE, [], [])
    tables.release(first)
    turn = Sequence(Request(stored + [26, 30, 31]), SamplingParams(), 8, queue.SimpleQueue(), 2)
    turn.plan = Plan(len(turn.request.ids))
    assert tables.admit(turn) and turn.kv_len == [12, 12]  # three whole pages: two of them filled by decoding
    assert turn.pages[1][:3] == first_pages(tables, stored)


def first_pages(tables: PageTables, ids: list[int]) -> list[int]:
    return tables.pools[1].cached(prefix_hashes(ids, PAGE, [], []))


def test_admission_takes_all_its_pages_or_none():
    tables = PageTables(STACKS, (5, 5), PAGE, prefix_caching=False)  # 4 usable pages per stack
    holder = admitted(tables, list(range(9)))  # 3 pages
    big = Sequence(Request(list(range(8))), SamplingParams(), 8, queue.SimpleQueue(), 2)
    big.plan = Plan(8)
    assert not tables.admit(big) and big.pages == [[], []] and tables.usage()[0] == (3, 3)
    tables.release(holder)
    assert tables.usage()[0] == (0, 0) and holder.pages == [[], []] and holder.hashes == [[], []]
    assert tables.admit(big) and len(big.pages[0]) == 2
