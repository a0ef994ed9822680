"""A turn's text sent while it is spoken (``shared.realtime.drafts``): a word goes out once two
successive previews agree on it and on all before it; the end sends the rest."""

from __future__ import annotations

from shared.realtime.drafts import Drafts


def test_words_go_out_once_two_previews_agree_and_the_end_sends_the_rest() -> None:
    drafts = Drafts()
    previews = ["The", "The quick", "The quick bro", "The quick brown fox", "The quick brown fox jumps"]
    sent = [drafts.preview("a", text) for text in previews]
    # "bro" became "brown": a word at the cut edge waits until a later preview agrees on it
    assert sent == [None, "The", " quick", None, " brown fox"]
    drafts.close("a")
    assert drafts.preview("a", "The quick brown fox jumps over") is None  # the turn has ended
    pieces = ["The quick brown fox", " jumps over the dog."]
    rest = drafts.final("a", pieces)
    assert rest == [" jumps over the dog."]
    assert "".join([*(d for d in sent if d), *rest]) == "".join(pieces)


def test_a_turn_with_no_agreed_word_sends_its_transcript_as_decoded() -> None:
    drafts = Drafts()
    assert drafts.preview("b", "Hel") is None
    assert drafts.preview("b", "Hello") is None
    drafts.close("b")
    assert drafts.final("b", ["Hello there.", " General Kenobi."]) == ["Hello there.", " General Kenobi."]


def test_turns_are_kept_apart_and_a_final_with_nothing_left_sends_nothing() -> None:
    drafts = Drafts()
    for text in ("One two", "One two three"):
        drafts.preview("x", text)
        drafts.preview("y", "Other words")
    drafts.preview("y", "Other words here")
    drafts.close("x")
    assert drafts.final("x", ["One two"]) == []
    assert drafts.final("y", ["Other words here."]) == [" here."]
