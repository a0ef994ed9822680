"""OpenAI's Realtime transcription-session protocol: the session's settings and the server's
events, shaped as ``openai.types.beta.realtime`` parses them.

Client events: ``transcription_session.update``, ``input_audio_buffer.append`` / ``commit`` /
``clear``. Server events: ``transcription_session.created`` / ``updated``,
``input_audio_buffer.speech_started`` / ``speech_stopped`` / ``committed`` / ``cleared``,
``conversation.item.input_audio_transcription.delta`` / ``completed`` / ``failed``, ``error``.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: OpenAI's transcription model names; each means this server's default model.
OPENAI_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Transcription(_Strict):
    model: str = "whisper-1"
    language: str | None = None
    prompt: str | None = None


class TurnDetection(_Strict):
    """Server VAD: silero's speech probability against ``threshold``; a turn ends after
    ``silence_duration_ms`` below it, and starts ``prefix_padding_ms`` before the first frame."""

    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(default=300, ge=0, le=5000)
    silence_duration_ms: int = Field(default=500, ge=0, le=10_000)


class SessionConfig(_Strict):
    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] = "pcm16"
    input_audio_transcription: Transcription = Transcription()
    turn_detection: TurnDetection | None = TurnDetection()
    modalities: list[str] = ["text"]
    include: list[str] = []

    def updated(self, changes: dict[str, Any]) -> SessionConfig:
        """This configuration with the fields of a ``transcription_session.update`` applied
        (a field set to null turns it off, as OpenAI's ``turn_detection: null`` does)."""
        merged = self.model_dump()
        for name, value in changes.items():
            if isinstance(value, dict) and isinstance(merged.get(name), dict):
                merged[name] = {**merged[name], **value}
            else:
                merged[name] = value
        return SessionConfig.model_validate(merged)

    def public(self) -> dict[str, Any]:
        """The session as OpenAI shows it (``client_secret`` only exists for REST sessions)."""
        return {"object": "realtime.transcription_session", "client_secret": None, **self.model_dump()}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": new_id("event"), "type": kind, **fields}


def error(message: str, *, code: str, kind: str = "invalid_request_error", **extra: Any) -> dict[str, Any]:
    """An ``error`` event in OpenAI's shape (``event_id`` of the client event at fault, if any)."""
    body = {"type": kind, "code": code, "message": message, "param": None, "event_id": None, **extra}
    return event("error", error=body)
