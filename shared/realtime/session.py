"""One live transcription session: client events in, server events out, utterances to the
engine's batcher on a live feed (transcribed one after another, in the order they were
committed)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from typing import Any, Protocol

import pydantic
import redis
import whisper
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from shared.api import gate
from shared.api.credentials import ApiKey
from shared.core.errors import TooManyRequestsError
from shared.core.settings import RealtimeSettings
from shared.engine.batcher import BatchKey, Dropped
from shared.engine.chunker import Chunk
from shared.engine.pcm import SAMPLE_RATE
from shared.engine.pipeline import Engine
from shared.jobs import quota
from shared.ops import model_ads
from shared.realtime.audio import Decoder
from shared.realtime.drafts import Drafts
from shared.realtime.protocol import OPENAI_MODELS, SessionConfig, error, event
from shared.realtime.turns import Turns, Utterance


class SessionHost(Protocol):
    """What a session uses of the server that accepted it (``RealtimeServer``)."""

    settings: RealtimeSettings
    r: redis.Redis
    engine: Engine

    @property
    def lease_seconds(self) -> float: ...


log = logging.getLogger("whisper_api.realtime")

#: Streamed audio is counted against the key's quota in steps of this many seconds.
_COUNT_EVERY_SECONDS = 1.0
#: The session's slot is renewed at most this often.
_RENEW_EVERY_SECONDS = 10.0
#: After the session ends, its committed utterances still get this long to be transcribed.
_DRAIN_SECONDS = 30.0


class _EndSessionError(Exception):
    """The session ends after this event (idle, too long, quota)."""

    def __init__(self, last: dict[str, Any]) -> None:
        super().__init__(last["error"]["message"])
        self.last = last


class LiveSession:
    def __init__(self, server: SessionHost, ws: ServerConnection, key: ApiKey, session_id: str) -> None:
        self.server, self.ws, self.key, self.id = server, ws, key, session_id
        self.settings = server.settings
        self.config = SessionConfig()
        self.model = self.settings.whisper_default_model
        self.prompt: tuple[int, ...] = ()
        self.turns = Turns(self.config)
        self.decoder = Decoder(self.config.input_audio_format)
        self.feed = server.engine.batcher.open(live=True)
        self.queue: asyncio.Queue[Utterance | None] = asyncio.Queue()
        self.uncounted = 0.0  # audio seconds not yet counted against the quota
        self.renewed = time.monotonic()
        self.limits = quota.limits(self.settings, key.limits)
        self.index = 0
        self.outstanding = 0  # utterances committed and not yet answered
        self.drafts = Drafts()
        self.previewing: asyncio.Task[None] | None = None  # one preview at a time
        #: The last client event or transcript answered (monotonic): idle is quiet on both sides.
        self.last_activity = time.monotonic()

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def run(self) -> None:
        created = {**self.config.public(), "id": self.id}
        await self.send(event("transcription_session.created", session=created))
        worker = asyncio.create_task(self._transcribe_all())
        try:
            await self._receive_all()
        except _EndSessionError as end:
            await self.send(end.last)
        except ConnectionClosed:
            pass
        finally:
            await self.queue.put(None)
            try:
                await asyncio.wait_for(worker, _DRAIN_SECONDS)
            except (TimeoutError, ConnectionClosed):
                worker.cancel()
            if self.previewing is not None:
                self.previewing.cancel()
            self.server.engine.batcher.close(self.feed)
            await self.ws.close(1000, "session ended")

    async def _receive_all(self) -> None:
        started = time.monotonic()
        limit, idle = self.settings.realtime_max_session_seconds, self.settings.realtime_idle_seconds
        while True:
            now = time.monotonic()
            left = started + limit - now
            quiet = idle - (now - self.last_activity)
            try:
                message = await asyncio.wait_for(self.ws.recv(), max(min(quiet, left), 0.0))
            except TimeoutError:
                if left > idle and (self.outstanding or time.monotonic() - self.last_activity < idle):
                    continue  # waiting for its transcripts, or just answered: not idling
                if left <= idle:
                    minutes = f"{limit / 60:g} minutes"
                    raise _EndSessionError(
                        error(f"Your session hit the maximum duration of {minutes}.", code="session_expired")
                    ) from None
                raise _EndSessionError(
                    error(
                        f"The session sent nothing for {idle:g} s and was closed.",
                        code="session_idle_timeout",
                    )
                ) from None
            self.last_activity = time.monotonic()
            for reply in await self._handle(message):
                await self.send(reply)

    # ---- client events --------------------------------------------------------------------
    async def _handle(self, message: str | bytes) -> list[dict[str, Any]]:
        try:
            data = json.loads(message)
        except ValueError:
            return [error("The event is not valid JSON.", code="invalid_json")]
        if not isinstance(data, dict):
            return [error("An event is a JSON object with a 'type'.", code="invalid_json")]
        kind, event_id = data.get("type"), data.get("event_id")
        try:
            if kind == "input_audio_buffer.append":
                return await self._append(data.get("audio"))
            if kind == "input_audio_buffer.commit":
                return await self._queue(*self.turns.commit())
            if kind == "input_audio_buffer.clear":
                return self.turns.clear()
            if kind == "transcription_session.update":
                return await self._update(data.get("session"))
        except _EventError as exc:
            exc.body["error"]["event_id"] = event_id
            return [exc.body]
        reply = error(
            f"Invalid value: '{kind}'. This server holds transcription sessions.", code="invalid_value"
        )
        reply["error"].update(param="type", event_id=event_id)
        return [reply]

    async def _append(self, audio: object) -> list[dict[str, Any]]:
        if not isinstance(audio, str):
            raise _EventError("'audio' must be a base64 string of audio bytes.", "audio")
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise _EventError("'audio' is not valid base64.", "audio") from None
        samples = self.decoder(raw)
        await self._count(len(samples) / SAMPLE_RATE)
        return await self._queue(*self.turns.append(samples))

    async def _queue(self, events: list[dict[str, Any]], utterances: list[Utterance]) -> list[dict[str, Any]]:
        for utterance in utterances:
            if utterance.preview:  # skipped while the last one still runs: the next is newer
                if self.previewing is None or self.previewing.done():
                    self.previewing = asyncio.create_task(self._preview(utterance))
                continue
            # The turn is over: a preview of it still waiting or decoding is not worth waiting for.
            self.server.engine.batcher.drop_disposable(self.feed)
            self.drafts.close(utterance.item_id)
            self.outstanding += 1
            await self.queue.put(utterance)
        return events

    async def _update(self, changes: object) -> list[dict[str, Any]]:
        if not isinstance(changes, dict):
            raise _EventError("'session' must be an object.", "session")
        try:
            config = self.config.updated(changes)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise _EventError(f"Invalid 'session.{where}': {first['msg']}.", f"session.{where}") from None
        model = await self._model(config.input_audio_transcription.model)
        prompt = config.input_audio_transcription.prompt
        self.prompt = tuple(await asyncio.to_thread(self._tokens, model, prompt)) if prompt else ()
        if config.input_audio_format != self.config.input_audio_format:
            self.decoder = Decoder(config.input_audio_format)
        self.turns.config = config
        self.config, self.model = config, model
        return [event("transcription_session.updated", session={**config.public(), "id": self.id})]

    async def _model(self, name: str) -> str:
        if name in OPENAI_MODELS:
            return self.settings.whisper_default_model
        servable = await asyncio.to_thread(model_ads.servable_here, self.settings, True)
        if name not in servable:
            raise _EventError(
                f"The model '{name}' is not served here; use one of: "
                f"{', '.join([*OPENAI_MODELS, *servable])}.",
                "session.input_audio_transcription.model",
            )
        return name

    def _tokens(self, model: str, prompt: str) -> list[int]:
        loaded = self.server.engine.models.get(model)
        tokenizer = whisper.tokenizer.get_tokenizer(
            loaded.is_multilingual, num_languages=loaded.num_languages
        )
        return list(tokenizer.encode(" " + prompt.strip()))

    async def _count(self, seconds: float) -> None:
        """Streamed audio against the key's daily quota; the session's slot kept alive."""
        self.uncounted += seconds
        now = time.monotonic()
        if self.uncounted < _COUNT_EVERY_SECONDS and now - self.renewed < _RENEW_EVERY_SECONDS:
            return
        counted, self.uncounted = self.uncounted, 0.0
        try:
            await asyncio.to_thread(self._account, counted, now - self.renewed >= _RENEW_EVERY_SECONDS)
        except TooManyRequestsError as exc:
            raise _EndSessionError(
                error(exc.detail, code="insufficient_quota", kind="rate_limit_error")
            ) from None
        except redis.RedisError as exc:  # a figure lost is no reason to end a live session
            log.warning("realtime: could not count session %s's audio: %s", self.id, exc)

    def _account(self, seconds: float, renew: bool) -> None:
        r, key_id = self.server.r, self.key.id
        if seconds:
            quota.count_live_audio(r, key_id, self.limits, seconds)
        if renew:
            gate.renew_live_session(r, key_id, self.id, self.server.lease_seconds)
            self.renewed = time.monotonic()

    # ---- transcription --------------------------------------------------------------------
    async def _transcribe_all(self) -> None:
        while (utterance := await self.queue.get()) is not None:
            try:
                await self._answer(utterance)
            finally:
                self.outstanding -= 1
                self.last_activity = time.monotonic()  # the idle clock starts after the answer

    async def _preview(self, utterance: Utterance) -> None:
        """A turn in progress transcribed so far: what two previews agree on goes out as a delta."""
        try:
            text = await self._transcribe(utterance)
        except Dropped:
            return  # the turn ended meanwhile
        except Exception:  # the whole turn is transcribed at its end anyway
            log.exception("realtime: a preview of session %s failed", self.id)
            return
        delta = self.drafts.preview(utterance.item_id, "".join(text))
        if delta:
            await self.send(self._delta(utterance.item_id, delta))

    @staticmethod
    def _delta(item_id: str, delta: str) -> dict[str, Any]:
        return event(
            "conversation.item.input_audio_transcription.delta", item_id=item_id, content_index=0, delta=delta
        )

    async def _answer(self, utterance: Utterance) -> None:
        try:
            text = await self._transcribe(utterance)
        except Exception as exc:
            log.exception("realtime: an utterance of session %s failed", self.id)
            body = {"type": "server_error", "code": "transcription_failed", "message": str(exc)[:200]}
            failed = "conversation.item.input_audio_transcription.failed"
            await self.send(event(failed, item_id=utterance.item_id, content_index=0, error=body))
            return
        for delta in self.drafts.final(utterance.item_id, text):
            await self.send(self._delta(utterance.item_id, delta))
        await self.send(
            event(
                "conversation.item.input_audio_transcription.completed",
                item_id=utterance.item_id,
                content_index=0,
                transcript="".join(text),
                usage={"type": "duration", "seconds": round(len(utterance.audio) / SAMPLE_RATE, 3)},
            )
        )

    async def _transcribe(self, utterance: Utterance) -> list[str]:
        """The utterance's text, one piece per segment (the deltas; joined: the transcript)."""
        transcription = self.config.input_audio_transcription
        key = BatchKey(
            model=self.model,
            task="transcribe",
            language=transcription.language,
            temperatures=(0.0,),
            prompt=self.prompt,
            word_timestamps=False,
        )
        self.index += 1
        chunk = Chunk(self.index, 0, utterance.audio)
        batcher = self.server.engine.batcher
        # A preview goes ahead of job batches until the turn's first words went out.
        interrupts = not utterance.preview or not self.drafts.started(utterance.item_id)
        future = await asyncio.to_thread(batcher.submit, self.feed, key, chunk, utterance.preview, interrupts)
        result = await asyncio.wrap_future(future)
        pieces = [segment["text"] for segment in result.segments if segment["text"]]
        if pieces:
            pieces[0] = pieces[0].lstrip()
        return pieces


class _EventError(Exception):
    """A client event the session refuses: an ``error`` event, and the session goes on."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.body = error(message, code="invalid_value")
        self.body["error"]["param"] = param
