"""A sequence's text on its own (hovle/runtime/output.py): stop strings found across token boundaries, a stream that
never shows text a later token could still change (a stop string's start included, whatever its length), the
concatenated stream equal to the final text, and the finish reasons."""

import pytest

from hovle.runtime.output import HOLD_BACK, SequenceText, finish_reason

PIECES = {
    1: "Hel",
    2: "lo",
    3: " wor",
    4: "ld",
    5: ".",
    6: " END",
    7: "OF",
    8: "TEXT",
    9: "é",
    10: " more",
    11: " ",
    12: "NOW",
}


def decode(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids)


def feed(text: SequenceText, ids: list[int]) -> tuple[list[str], bool]:
    """Adds ids one by one as the scheduler does; returns the stream's deltas and whether a stop string ended it."""
    deltas, stopped = [], False
    for i, token in enumerate(ids):
        stopped = text.add(token)
        deltas.append(text.delta(stopped or i == len(ids) - 1))
        if stopped:
            break
    return deltas, stopped


def test_a_stop_string_split_across_tokens_ends_the_text_before_it():
    text = SequenceText(decode, ("world",))
    deltas, stopped = feed(text, [1, 2, 3, 4, 5])
    assert stopped and text.final_text() == "Hello" and "".join(deltas) == "Hello"


def test_a_stream_never_shows_the_start_of_a_stop_string_longer_than_the_hold_back():
    stop = " ENDOFTEXTNOW"
    assert len(stop) > HOLD_BACK  # a fixed hold-back of HOLD_BACK characters would leak " E..." here
    text = SequenceText(decode, (stop,))
    deltas, stopped = feed(text, [1, 2, 3, 4, 6, 7, 8, 12, 10])
    assert stopped and text.final_text() == "Hello world"
    assert "".join(deltas) == "Hello world" and not any("END" in d or "OF" in d for d in deltas)


def test_the_concatenated_stream_is_the_final_text():
    text = SequenceText(decode, ())
    deltas, stopped = feed(text, [1, 2, 3, 4, 9, 10, 11])
    assert not stopped and "".join(deltas) == text.final_text() == "Hello worldé more"
    assert deltas[-1] != ""  # the held-back tail is released when the sequence ends


def test_text_is_held_back_until_it_cannot_change():
    text = SequenceText(decode, ())
    text.add(1)
    assert text.delta(False) == ""  # "Hel": shorter than the hold-back
    for token in (2, 3, 4, 10):
        text.add(token)
    shown = text.delta(False)
    assert shown and "Hello world more".startswith(shown) and len("Hello world more") - len(shown) >= HOLD_BACK


@pytest.mark.parametrize(
    "token, ignore_eos, budget, ids, reason",
    [(99, False, 5, [], "stop"), (99, True, 5, [99], None), (1, False, 1, [1], "length"), (1, False, 2, [1], None)],
)
def test_finish_reasons(token, ignore_eos, budget, ids, reason):
    PIECES[99] = "<eot>"
    text = SequenceText(decode, ())
    assert finish_reason(text, token, {99}, ignore_eos, budget) == reason
    assert text.ids == ids  # the end-of-turn token is not part of the output unless ignored
