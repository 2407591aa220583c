"""The page pool of one stack (hovle/runtime/page_pool.py) on its own: allocation and release by reference count,
eviction of the least recently freed cached page, prefix lookup by chained hashes, the scratch page never handed out,
and the chain itself (a page's hash depends on every page before it, and on the images whose tokens it holds)."""

import pytest

from hovle.runtime.kv_cache import SCRATCH_PAGE
from hovle.runtime.page_pool import OutOfPages, PagePool, page_hash, prefix_hashes


def test_allocation_never_hands_out_the_scratch_page_and_runs_out_cleanly():
    pool = PagePool(5)
    pages = pool.allocate(4)
    assert SCRATCH_PAGE not in pages and len(set(pages)) == 4 and pool.num_free == 0 and pool.num_used == 4
    with pytest.raises(OutOfPages):
        pool.allocate(1)
    pool.release(pages[:2])
    assert pool.num_free == 2 and pool.num_used == 2


def test_a_shared_page_is_freed_only_when_its_last_holder_releases_it():
    pool = PagePool(4)
    [page] = pool.allocate(1)
    pool.register(page, b"h")
    pool.share([page])  # a second sequence holds it
    pool.release([page])
    assert pool.num_free == 2 and pool.cached([b"h"]) == [page]  # still held by the first
    pool.release([page])
    assert pool.num_free == 3
    with pytest.raises(AssertionError, match="released more often"):
        pool.release([page])


def test_freed_pages_stay_findable_until_evicted_least_recently_freed_first():
    pool = PagePool(4)
    a, b, c = pool.allocate(3)
    for page, h in ((a, b"a"), (b, b"b"), (c, b"c")):
        pool.register(page, h)
    pool.release([b])
    pool.release([a])
    pool.release([c])  # freed in the order b, a, c
    assert pool.cached([b"a"]) == [a] and pool.cached([b"b"]) == [b]
    [first] = pool.allocate(1)
    assert first == b and pool.cached([b"b"]) == []  # the least recently freed goes first, and forgets its hash
    assert pool.cached([b"a"]) == [a] and pool.cached([b"c"]) == [c]


def test_sharing_a_free_cached_page_takes_it_off_the_free_list():
    pool = PagePool(3)
    a, b = pool.allocate(2)
    pool.register(a, b"a")
    pool.release([a, b])
    assert pool.num_free == 2
    pool.share(pool.cached([b"a"]))
    assert pool.num_free == 1 and pool.allocate(1) == [b]  # a is in use again: never handed out twice


def test_lookup_stops_at_the_first_missing_page_and_the_first_writer_wins():
    pool = PagePool(6)
    pages = pool.allocate(3)
    pool.register(pages[0], b"x")
    pool.register(pages[2], b"z")
    assert pool.cached([b"x", b"y", b"z"]) == [pages[0]]
    pool.register(pages[1], b"x")  # the same content again: the first page keeps the hash
    assert pool.cached([b"x"]) == [pages[0]]


def test_hashes_are_chained_over_the_pages_before():
    ids = [5, 6, 7, 8] * 3
    hashes = prefix_hashes(ids, 4, [], [])
    assert len(hashes) == 3 and len(set(hashes)) == 3  # identical pages at different places: different hashes
    assert hashes[1] == page_hash(hashes[0], ids[4:8], [])
    changed = prefix_hashes([9] + ids[1:], 4, [], [])
    assert all(a != b for a, b in zip(hashes, changed))  # a change in page 0 changes every later page's hash
    assert prefix_hashes(ids[:11], 4, [], []) == hashes[:2]  # a partial last page has no hash


def test_image_keys_enter_the_pages_holding_the_image():
    ids = list(range(12))
    spans, keys = [(5, 7)], [b"img-A"]
    with_a = prefix_hashes(ids, 4, spans, keys)
    with_b = prefix_hashes(ids, 4, spans, [b"img-B"])
    assert with_a[0] == with_b[0] and with_a[1] != with_b[1] and with_a[2] != with_b[2]
