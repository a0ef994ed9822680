"""Running openai-whisper: model resolution, a bounded cache of loaded models, decoding.

Only the worker imports this module (it imports torch and whisper).
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import whisper

from shared.errors import PermanentJobError
from shared.job_service import model_path
from shared.models import JobOptions, Segment, TranscriptResult, Word
from shared.settings import WorkerSettings

log = logging.getLogger("whisper_api.transcriber")

SAMPLE_RATE = 16_000
#: A decode shorter than this share of what ffprobe promised is treated as truncated audio.
_TRUNCATION_RATIO = 0.9


def pick_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class ModelCache:
    """Loaded models kept warm between jobs, least recently used evicted first."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._models: OrderedDict[str, whisper.Whisper] = OrderedDict()
        self._lock = threading.Lock()
        self.device = pick_device(settings.whisper_device)

    def get(self, name: str) -> whisper.Whisper:
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            model = self._load(name)
            self._models[name] = model
            while len(self._models) > self._settings.worker_model_cache_size:
                evicted, _ = self._models.popitem(last=False)
                log.info("evicted model %s from the cache", evicted)
            return model

    def _load(self, name: str) -> whisper.Whisper:
        path = model_path(self._settings, name)
        if path is None and name not in self._settings.whisper_models:
            raise PermanentJobError(f"model {name!r} is not offered by this worker")
        source = str(path) if path else name
        root = str(self._settings.whisper_model_dir) if self._settings.whisper_model_dir else None
        try:
            model = whisper.load_model(source, device=self.device, download_root=root)
        except Exception as exc:  # download failures, corrupt checkpoints, CUDA OOM
            raise PermanentJobError(
                f"model {name!r} could not be loaded on this worker ({type(exc).__name__}: "
                f"{str(exc)[:200]}); the operator can place {name}.pt in WHISPER_MODEL_DIR"
            ) from exc
        log.info("loaded model %s from %s on %s", name, source, self.device)
        return model


def decode_audio(path: str, expected_seconds: float | None) -> np.ndarray[Any, np.dtype[np.float32]]:
    """16 kHz mono float32 samples; PermanentJobError for undecodable or truncated audio."""
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-xerror",
        "-threads",
        "0",
        "-i",
        path,
        "-f",
        "s16le",
        "-ac",
        "1",
        "-acodec",
        "pcm_s16le",
        "-ar",
        str(SAMPLE_RATE),
        "-",
    ]
    done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise PermanentJobError(
            "the audio could not be decoded"
            + (f": {detail[-1][:200]}" if detail else "")
            + "; re-encode it (e.g. to WAV or MP3) and submit it again"
        )
    samples = np.frombuffer(done.stdout, np.int16).flatten().astype(np.float32) / 32768.0
    got = len(samples) / SAMPLE_RATE
    if got == 0:
        raise PermanentJobError("the audio decoded to no samples; the file holds no sound")
    if expected_seconds and got < expected_seconds * _TRUNCATION_RATIO:
        raise PermanentJobError(
            f"the audio looks truncated: its header promises {expected_seconds:.1f} s but only "
            f"{got:.1f} s could be decoded; upload the complete file"
        )
    return samples


def _temperatures(start: float) -> tuple[float, ...]:
    # Whisper's CLI: start at the requested temperature, fall back upwards in 0.2 steps.
    return tuple(np.arange(start, 1.0 + 1e-6, 0.2).round(2).tolist())


def transcribe(
    model: whisper.Whisper,
    device: str,
    audio: np.ndarray[Any, np.dtype[np.float32]],
    options: JobOptions,
    checkpoint: Callable[[], None] = lambda: None,
) -> TranscriptResult:
    """Run whisper with the job's options and return the canonical result.

    ``checkpoint`` is called before every 30-second window is decoded; it raises to stop the
    job there (cancellation, shutdown), so a job stops within one window of audio.
    """
    default_threads = torch.get_num_threads()
    if device == "cpu" and options.threads:
        torch.set_num_threads(options.threads)
    original_decode = model.decode

    def decode_window(*args: Any, **kwargs: Any) -> Any:
        checkpoint()
        return original_decode(*args, **kwargs)

    # whisper.transcribe offers no per-window callback; it calls ``model.decode`` once per
    # window (and per temperature fallback), so an instance attribute shadowing the method is
    # the narrowest hook. The model cache hands a model to one job at a time (see ModelCache).
    model.decode = decode_window
    try:
        out = model.transcribe(
            audio,
            language=options.language,
            task=options.task.value,
            temperature=_temperatures(options.temperature),
            word_timestamps=options.word_timestamps,
            initial_prompt=options.initial_prompt,
            fp16=device == "cuda",
            verbose=None,
        )
    finally:
        del model.decode
        torch.set_num_threads(default_threads)
    return to_result(out, options, duration=len(audio) / SAMPLE_RATE)


def to_result(out: dict[str, Any], options: JobOptions, duration: float) -> TranscriptResult:
    """whisper's output dict as a ``TranscriptResult``."""
    segments = [
        Segment(
            id=seg["id"],
            seek=seg["seek"],
            start=round(seg["start"], 3),
            end=round(seg["end"], 3),
            text=seg["text"],
            tokens=seg["tokens"],
            temperature=seg["temperature"],
            avg_logprob=seg["avg_logprob"],
            compression_ratio=seg["compression_ratio"],
            no_speech_prob=seg["no_speech_prob"],
            words=[
                Word(
                    word=w["word"],
                    start=round(w["start"], 3),
                    end=round(w["end"], 3),
                    probability=w["probability"],
                )
                for w in seg["words"]
            ]
            if options.word_timestamps
            else None,
        )
        for seg in out["segments"]
    ]
    return TranscriptResult(
        task=options.task,
        language=out["language"],
        duration=round(duration, 3),
        text=out["text"].strip(),
        model=options.model,
        segments=segments,
    )
