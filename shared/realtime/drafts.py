"""The text of a turn while it is still spoken, sent as ``.delta`` events once it settles.

Every half second of a turn in progress (``turns.PREVIEW_EVERY``) its audio so far is
transcribed again (a *preview*). A word is sent once two successive previews agree on it and on
every word before it (the local agreement of whisper-streaming: a word at the cut edge of the
audio changes, a word well inside it does not). When the turn ends, its transcript is decoded
whole as before; the words past those already sent go out as the last ``.delta``, then
``.completed`` with the whole transcript. Joined, the deltas are the transcript, unless the last
decoding changed a word the previews had agreed on (rare): the transcript is then the last
decoding's, as it is without previews.
"""

from __future__ import annotations

#: Ended turns remembered (a preview outlives its turn by one decoding at most).
_CLOSED_KEPT = 16


class Drafts:
    def __init__(self) -> None:
        self._seen: dict[str, list[str]] = {}  # the last preview's words, per item
        self._sent: dict[str, int] = {}  # words already sent as deltas, per item
        #: Items whose turn ended (the latest few): a preview still running says nothing for them.
        self._closed: dict[str, None] = {}

    def preview(self, item: str, text: str) -> str | None:
        """A preview of ``item`` decoded ``text``: the delta to send now (None: nothing new)."""
        if item in self._closed:
            return None
        words, before = text.split(), self._seen.get(item, [])
        agreed = 0
        while agreed < min(len(words), len(before)) and words[agreed] == before[agreed]:
            agreed += 1
        self._seen[item] = words
        sent = self._sent.get(item, 0)
        if agreed <= sent:
            return None
        self._sent[item] = agreed
        return (" " if sent else "") + " ".join(words[sent:agreed])

    def started(self, item: str) -> bool:
        """Whether some of ``item``'s words went out already."""
        return self._sent.get(item, 0) > 0

    def close(self, item: str) -> None:
        """``item``'s turn ended: its transcript is being decoded whole; previews stop speaking."""
        self._closed[item] = None
        if len(self._closed) > _CLOSED_KEPT:
            del self._closed[next(iter(self._closed))]

    def final(self, item: str, pieces: list[str]) -> list[str]:
        """The deltas still to send for ``item``, whose transcript is ``pieces`` joined."""
        sent = self._sent.pop(item, 0)
        self._seen.pop(item, None)
        if not sent:
            return pieces
        rest = "".join(pieces).split()[sent:]
        return [" " + " ".join(rest)] if rest else []
