"""The scheduler on its own, driven by a fake runner (no model, no device): FIFO admission, chunk budgets, the
preemption victim order, cancellation, failures, and the events each sequence gets."""

import queue

import pytest

from hovle.families import KVStack
from hovle.generation import SamplingParams
from hovle.loaders.config import RopeConfig
from hovle.runtime.output import Done, Failed, SequenceText, Token
from hovle.runtime.page_tables import PageTables
from hovle.runtime.plan import DecodeOutput, DecodePlan, PrefillOutput, PrefillPlan
from hovle.runtime.scheduler import Scheduler
from hovle.runtime.sequence import Sequence, Status

PAGE = 4
ROPE = RopeConfig(theta=10000.0, head_dim=8, max_position_embeddings=4096)
STACKS = (KVStack("first", 1, 1, 8, ROPE), KVStack("tokens", 1, 1, 8, ROPE))


class FakeRequest:
    def __init__(self, n: int):
        self.ids = list(range(10, 10 + n))
        self.image_keys, self.pixel_values, self.preprocess_s, self.tiles = [], None, 0.0, []

    def stack_ids(self, k):
        return self.ids

    def stack_spans(self, k):
        return []


class FakePlan:
    def resume(self, cached, page_size):
        return (0, 0)

    def drop_buffers(self):
        pass


class FakeRunner:
    """Every chunk completes as asked; every token is `token` (or the plan's rows get `bad`)."""

    def __init__(self, token: int = 1):
        self.token, self.bad = token, set()
        self.plans = []

    def execute(self, plan):
        self.plans.append(plan)
        if isinstance(plan, DecodePlan):
            return DecodeOutput([self.token] * len(plan.seqs), [s.id in self.bad for s in plan.seqs])
        first = [c for c in plan.chunks if c.finishes and not c.seq.all_logits]
        cached = [(c.end, c.end) for c in plan.chunks]
        return PrefillOutput(cached, [None] * len(plan.chunks), [self.token] * len(first), [False] * len(first))


def make(pages: int = 32, max_batch: int = 4, chunk: int = 8, idle: int = 64, recomputable: bool = True):
    tables = PageTables(STACKS, (pages, pages), PAGE, prefix_caching=False)
    return Scheduler(
        tables,
        max_batch=max_batch,
        prefill_chunk=chunk,
        idle_chunk=idle,
        stop_ids=(99,),
        plan_prompt=lambda req, generated, all_logits: FakePlan(),
        recomputable=recomputable,
    )


def seq(n: int, new: int = 3) -> Sequence:
    s = Sequence(FakeRequest(n), SamplingParams(max_new_tokens=new), new, queue.SimpleQueue(), 2)
    s.text = SequenceText(lambda ids: " ".join(map(str, ids)), ())
    return s


def run(scheduler: Scheduler, runner: FakeRunner, rounds: int = 100) -> None:
    for _ in range(rounds):
        plan = scheduler.schedule()
        if plan is None and scheduler.idle:
            return
        if plan is not None:
            scheduler.update(plan, runner.execute(plan))


def events(s: Sequence) -> list:
    out = []
    while not s.events.empty():
        out.append(s.events.get())
    return out


def test_admission_is_fifo_and_a_blocked_head_is_not_overtaken():
    sched, runner = make(pages=6), FakeRunner()  # 5 usable pages per stack
    big, small = seq(16), seq(2)  # the head needs 4 pages, then 1 more; small would fit
    held = seq(6)  # admitted first, holds 2 pages
    sched.waiting.extend([held, big, small])
    plan = sched.schedule()
    assert [c.seq for c in plan.chunks] == [held] and big.status is Status.WAITING and small.status is Status.WAITING
    run(sched, runner)
    order = [c.seq for p in runner.plans if isinstance(p, PrefillPlan) for c in p.chunks]
    assert order.index(big) < order.index(small)  # small waited behind big
    assert all(isinstance(events(s)[-1], Done) for s in (held, big, small))


def test_prefill_budget_is_the_chunk_while_others_decode_and_the_idle_chunk_otherwise():
    sched, runner = make(chunk=4, idle=64), FakeRunner()
    first = seq(20, new=50)
    sched.waiting.append(first)
    plan = sched.schedule()
    assert plan.chunks[0].end == 20  # nothing decodes: the whole prompt at once
    sched.update(plan, runner.execute(plan))
    second = seq(20)
    sched.waiting.append(second)
    plan = sched.schedule()
    assert isinstance(plan, DecodePlan)  # first decodes ...
    sched.update(plan, runner.execute(plan))
    plan = sched.schedule()
    assert isinstance(plan, PrefillPlan) and [(c.seq, c.end) for c in plan.chunks] == [(second, 4)]  # ... so 4


def test_the_youngest_other_sequence_is_preempted_and_requeued_at_the_front():
    """Three prompts of 2 pages each in 8 pages: at position 8 each needs a third. old and mid get the last two;
    young, needing one, preempts the youngest *other* running sequence, mid (never old, the oldest)."""
    sched, runner = make(pages=9, max_batch=3), FakeRunner()
    old, mid, young = seq(7, new=20), seq(7, new=20), seq(7, new=20)
    sched.waiting.extend([old, mid, young])
    run(sched, runner, rounds=3)  # prefill, then two decode steps
    assert (old.preempted, mid.preempted, young.preempted) == (0, 1, 0) and sched.stats.preemptions == 1
    assert list(sched.waiting) == [mid] and mid.kv_len == [0, 0] and mid.generated == [1, 1]
    assert mid.pages == [[], []] and mid.row is None and len(sched.free_rows) == 1
    run(sched, runner)
    assert all(isinstance(events(s)[-1], Done) for s in (old, mid, young))
    assert mid.generated == [1] * 20  # it went on from what it had generated


def test_without_recompute_the_victim_fails_instead():
    sched, runner = make(pages=9, max_batch=3, recomputable=False), FakeRunner()
    seqs = [seq(7, new=20) for _ in range(3)]
    sched.waiting.extend(seqs)
    run(sched, runner)
    last = [events(s)[-1] for s in seqs]
    assert isinstance(last[0], Done) and isinstance(last[2], Failed) and "cannot be recomputed" in str(last[2].error)


def test_cancelled_sequences_end_and_give_their_pages_and_row_back():
    sched, runner = make(), FakeRunner()
    waiting, running = seq(5, new=30), seq(5, new=30)
    sched.waiting.append(running)
    run(sched, runner, rounds=3)
    sched.waiting.append(waiting)
    waiting.cancelled = running.cancelled = True
    run(sched, runner)
    assert events(waiting) == [Done(0, "cancelled")]
    assert events(running)[-1] == Done(0, "cancelled")
    assert sched.pages.usage()[0] == (0, 0) and len(sched.free_rows) == 4


def test_non_finite_logits_fail_the_sequence_alone():
    sched, runner = make(), FakeRunner()
    good, bad = seq(5), seq(5)
    sched.waiting.extend([good, bad])
    run(sched, runner, rounds=1)  # both prefilled and running
    runner.bad = {bad.id}
    run(sched, runner)
    last = events(bad)[-1]
    assert isinstance(last, Failed) and "not finite" in str(last.error)
    got = events(good)
    assert [e.token for e in got if isinstance(e, Token)] == [1, 1, 1] and got[-1] == Done(0, "length")


@pytest.mark.parametrize("token, reason", [(99, "stop"), (1, "length")])
def test_finish_reasons_and_the_end_of_turn_token_stays_out_of_the_text(token, reason):
    sched, runner = make(), FakeRunner(token)
    s = seq(5, new=2)
    sched.waiting.append(s)
    run(sched, runner)
    assert events(s)[-1] == Done(0, reason) and s.text.ids == ([] if token == 99 else [1, 1])
