"""The routes of other services' APIs, answered synchronously: OpenAI's ``/v1/audio/*`` and
``/v1/models`` (``shared.api.openai_compat``), and whisper-asr-webservice's ``/asr`` and
``/detect-language`` (``shared.api.asr_compat``). Each is a job underneath, waited for."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

from flask import Request, Response
from werkzeug.datastructures import MultiDict

from shared.api import access, asr_compat, gate, openai_compat, openai_stream, parsing
from shared.api.http import json_response
from shared.api.uploads import audio_file, receive
from shared.core.clients import jobs_clients
from shared.core.settings import JobsSettings
from shared.jobs import job_service, quota
from shared.jobs.models import Task, TranscriptResult


def handle_openai_transcriptions(request: Request) -> Response:
    return _openai_audio(request, Task.TRANSCRIBE)


def handle_openai_translations(request: Request) -> Response:
    return _openai_audio(request, Task.TRANSLATE)


def _openai_audio(request: Request, task: Task) -> Response:
    c = jobs_clients()
    settings, r, store = c.settings, c.redis, c.store
    key = openai_compat.authenticate(settings, r, request)
    access.note_key(request, key.id)
    limits = quota.limits(settings, key.limits)
    with ExitStack() as held:
        # The slot is taken before the upload is read: a key's extra calls cost nothing.
        held.enter_context(gate.sync_wait(r, key.id, limits, settings.openai_wait_seconds))
        max_bytes = settings.max_upload_bytes
        with receive(request, max_bytes, "file", max_field_bytes=openai_compat.MAX_FIELD_BYTES) as form:
            audio = openai_compat.parse_request(form.fields, task, settings)
            upload = audio_file(form, "file", max_bytes)
            clips = audio.known_speakers
            job = job_service.create_job(
                c, job_service.NewJob(key.id, audio.options, upload, limits=limits, known_speakers=clips)
            )
        if audio.stream:  # the stream holds the slot until it ends
            stream = openai_stream.transcript_events(c, job, held.pop_all())
            headers = {**openai_stream.HEADERS, "Location": f"/transcribe/{job.id}"}
            return Response(stream, content_type="text/event-stream", headers=headers)
        done = openai_compat.wait_for(r, job.id, settings.openai_wait_seconds)
    body, content_type = openai_compat.result_body(store, done, audio)
    return Response(body, content_type=content_type)


def handle_openai_models(request: Request) -> Response:
    c = jobs_clients()
    key = openai_compat.authenticate(c.settings, c.redis, request)
    access.note_key(request, key.id)
    return json_response(openai_compat.model_list(c.settings))


def handle_asr(request: Request) -> Response:
    """whisper-asr-webservice's ``POST /asr``: a job, waited for, answered in ``output``."""
    asked, result, filename = _asr_job(request, asr_compat.parse_asr, asr_compat.ASR_PARAMS)
    body, headers = asr_compat.answer(result, asked, filename)
    return Response(body, headers=headers)


def handle_detect_language(request: Request) -> Response:
    """whisper-asr-webservice's ``POST /detect-language``: a job on the part it names (the first
    30 s by default)."""
    _, result, _ = _asr_job(request, asr_compat.parse_detect, asr_compat.DETECT_PARAMS)
    return json_response(asr_compat.detected(result))


def _asr_job(
    request: Request,
    parse: Callable[[MultiDict[str, str], JobsSettings], asr_compat.AsrRequest],
    params: tuple[str, ...],
) -> tuple[asr_compat.AsrRequest, TranscriptResult, str | None]:
    c = jobs_clients()
    settings = c.settings
    client = parsing.client_address(request, settings.proxy_hops)
    key = asr_compat.authenticate(settings, c.redis, request.headers.get("Authorization"), client)
    access.note_key(request, key.id)
    asked = parse(asr_compat.known_args(request.args, params), settings)
    # Synchronous like /v1: the key's concurrent waits are capped before the upload is read.
    limits = quota.limits(settings, key.limits)
    with (
        gate.sync_wait(c.redis, key.id, limits, settings.asr_wait_seconds),
        receive(request, settings.max_upload_bytes, file_field=asr_compat.FILE_FIELD) as form,
    ):
        upload = audio_file(form, asr_compat.FILE_FIELD, settings.max_upload_bytes)
        result = asr_compat.transcribe(c, key, upload, asked)
    return asked, result, asked.video_file or upload.filename
