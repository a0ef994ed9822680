"""Who spoke when: speaker embeddings over the VAD's speech regions, clustered once per job.

The speaker encoder is resemblyzer's GE2E d-vector model (a 3-layer LSTM, 256-dimensional
embeddings of 1.6 s of speech), whose weights ship inside the ``resemblyzer`` wheel: no account,
no download. The wheel is installed without its dependencies (librosa and webrtcvad, needed only
for its own file loading and silence trimming): the encoder's input, a 40-band power mel
spectrogram (25 ms windows, 10 ms hop), is computed here with torch, and silero's VAD (the
chunker's) finds the speech.

Streaming: each chunk's speech regions are embedded as the chunk goes by (windows of 1.6 s every
``HOP`` seconds), and only the embeddings (512 bytes each, float16) and their times are kept,
about 4 MB an hour of speech. At the end the windows are clustered (average-linkage
agglomerative on cosine distance, over at most ``MAX_POINTS`` of them, the rest joining the
nearest cluster), so the count can be given, bounded or estimated.

Known speakers (OpenAI's ``known_speaker_names[]``/``known_speaker_references[]``): each
reference clip is embedded the same way and averaged; a speaker takes the name of the reference
closest to the mean of its windows, one name per speaker, when they are at least
``KNOWN_MATCH`` alike.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.engine.pcm import SAMPLE_RATE, Samples

#: The encoder's input: 40 mel bands of the power spectrum, 25 ms windows every 10 ms.
N_MELS, N_FFT, HOP_LENGTH = 40, 400, 160
#: One embedding covers 160 frames (1.6 s).
WINDOW_FRAMES = 160
#: Windows start this often inside a speech region (seconds).
HOP = 0.4
#: Speech shorter than this gives no window of its own (too little voice to tell who).
MIN_SPEECH = 0.4
#: Regions closer than this (same speaker) are one turn; the VAD splits words at short pauses.
JOIN_GAP = 0.5
#: Clustering runs over at most this many windows (its cost is quadratic in them).
MAX_POINTS = 1200
#: A speaker is a cluster of at least this many windows (8 s of speech at HOP 0.4) or, in a
#: short recording, this share of them; and never less than MIN_CLUSTER of them. Smaller
#: clusters are stray windows (overlaps, turn edges), which bench/diarize.py showed splitting
#: one voice into two at distances up to 0.35.
MIN_WINDOWS, MIN_SHARE, MIN_CLUSTER = 20, 0.1, 0.02
#: Two clusters whose windows are this far apart on average (cosine distance) are two speakers,
#: when the count is not given (bench/diarize.py tunes it).
THRESHOLD = 0.3
#: A speaker and a reference clip this alike (cosine similarity of their mean embeddings) are
#: one person. Measured on devtools/conversation.py's voices (a conversation's speaker against
#: a clip of other words): the same voice 0.90-0.93, two voices 0.50-0.79.
KNOWN_MATCH = 0.82
#: In WORKER_PRELOAD_MODELS, this name loads the speaker encoder at start-up.
PRELOAD_NAME = "diarizer"
#: resemblyzer raises quiet speech to this level before its mel spectrogram (dBFS).
_TARGET_DBFS = -30.0


@dataclass(frozen=True)
class Turn:
    """``speaker`` spoke from ``start`` to ``end`` (seconds)."""

    start: float
    end: float
    speaker: str


def speaker_label(index: int) -> str:
    return f"SPEAKER_{index:02d}"


def _weights_path() -> Path:
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the resemblyzer package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


def available() -> bool:
    """Whether this installation can diarize (the encoder's weights are present)."""
    try:
        return _weights_path().is_file()
    except (RuntimeError, ValueError):
        return False


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    mel = hz / (200.0 / 3)
    log = hz >= 1000.0
    return np.where(log, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    hz = mel * (200.0 / 3)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), hz)


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)``: Slaney-normalised triangles."""
    fft_freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(sr / 2)), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


class SpeakerEncoder:
    """The GE2E encoder, loaded once per worker; thread-safe (one computation at a time)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        state = torch.load(_weights_path(), map_location="cpu", weights_only=True)["model_state"]
        self.lstm = torch.nn.LSTM(N_MELS, 256, 3, batch_first=True)
        self.linear = torch.nn.Linear(256, 256)
        self.lstm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lstm.")})
        self.linear.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("linear.")})
        self.lstm.to(self.device).eval()
        self.linear.to(self.device).eval()
        self._filters = torch.from_numpy(mel_filters()).to(self.device)
        self._window = torch.hann_window(N_FFT, device=self.device)
        self._lock = threading.Lock()

    def mel(self, audio: Samples) -> torch.Tensor:
        """(frames, 40) power mel spectrogram of ``audio``, raised to -30 dBFS if quieter."""
        wav = torch.from_numpy(np.ascontiguousarray(audio, np.float32)).to(self.device)
        power = float(torch.mean(wav * wav))
        if power > 0:
            gain_db = _TARGET_DBFS - 10 * np.log10(power)
            if gain_db > 0:
                wav = wav * float(10 ** (gain_db / 20))
        spec = torch.stft(
            wav, N_FFT, HOP_LENGTH, window=self._window, center=True, pad_mode="constant", return_complex=True
        )
        return (self._filters @ spec.abs().pow(2)).T

    @torch.inference_mode()
    def embed(self, mels: torch.Tensor) -> np.ndarray:
        """L2-normalised embeddings (n, 256) of ``mels`` (n, 160, 40)."""
        with self._lock:
            _, (hidden, _) = self.lstm(mels)
            raw = torch.relu(self.linear(hidden[-1]))
            out = raw / torch.linalg.vector_norm(raw, dim=1, keepdim=True).clamp_min(1e-8)
        return np.asarray(out.float().cpu().numpy(), np.float32)


class Diarizer:
    """One job's speaker windows: fed chunk by chunk, clustered into turns at the end."""

    def __init__(self, encoder: SpeakerEncoder) -> None:
        self.encoder = encoder
        self._embeddings: list[np.ndarray] = []  # float16 (n, 256) per chunk
        self._spans: list[tuple[float, float, int]] = []  # (start, end, region) per window, seconds
        self._regions: list[tuple[float, float]] = []  # speech regions (seconds)
        self._centres: dict[str, np.ndarray] = {}  # speaker label -> mean embedding (unit)

    def add(self, chunk_start: int, audio: Samples, speech: Sequence[tuple[int, int]]) -> None:
        """Embed the speech regions (recording samples) of a chunk that starts at ``chunk_start``."""
        mels: list[torch.Tensor] = []
        for a, b in speech:
            region = len(self._regions)
            self._regions.append((a / SAMPLE_RATE, b / SAMPLE_RATE))
            if (b - a) / SAMPLE_RATE < MIN_SPEECH:
                continue
            mel, starts = _windows(self.encoder.mel(audio[a - chunk_start : b - chunk_start]))
            for s in starts:
                mels.append(mel[s : s + WINDOW_FRAMES])
                lo = a / SAMPLE_RATE + s * HOP_LENGTH / SAMPLE_RATE
                self._spans.append(
                    (lo, min(b / SAMPLE_RATE, lo + WINDOW_FRAMES * HOP_LENGTH / SAMPLE_RATE), region)
                )
        if mels:
            self._embeddings.append(self.encoder.embed(torch.stack(mels)).astype(np.float16))

    def turns(
        self,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
    ) -> list[Turn]:
        """The speech regions split into speaker turns, speakers numbered by first appearance."""
        if not self._spans:
            return [Turn(a, b, speaker_label(0)) for a, b in _joined(self._regions)] if self._regions else []
        x = np.concatenate(self._embeddings)  # float16: a 3-hour meeting's are 14 MB
        self._embeddings = [x]
        labels = cluster(x, num_speakers, min_speakers, max_speakers)
        turns, order = _timeline(self._regions, self._spans, labels)
        self._centres = {speaker_label(i): _unit(_mean(x[labels == k])) for k, i in order.items()}
        return turns

    def known(self, references: Sequence[tuple[str, Samples]]) -> dict[str, str]:
        """Names for the speakers ``turns`` found (``SPEAKER_00`` -> ``Alice``) from reference
        clips of known people (name, 16 kHz samples): each name goes to the speaker most like
        its clip, most alike first, where they are at least ``KNOWN_MATCH`` alike."""
        if not self._centres or not references:
            return {}
        labels = list(self._centres)
        centres = np.stack([self._centres[label] for label in labels])
        clips = np.stack([self._clip(audio) for _, audio in references])
        alike = centres @ clips.T
        names: dict[str, str] = {}
        for flat in np.argsort(alike, axis=None)[::-1]:
            s, r = divmod(int(flat), len(references))
            if alike[s, r] < KNOWN_MATCH:
                break
            name = references[r][0]
            if labels[s] not in names and name not in names.values():
                names[labels[s]] = name
        return names

    def _clip(self, audio: Samples) -> np.ndarray:
        """The mean embedding of a whole clip (its windows as if it were one speech region)."""
        mel, starts = _windows(self.encoder.mel(audio))
        windows = torch.stack([mel[s : s + WINDOW_FRAMES] for s in starts])
        return _unit(self.encoder.embed(windows).mean(axis=0))


def _windows(mel: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """``mel`` padded to one window at least, and where its windows start: every ``HOP``, the
    tail getting one too."""
    frames = mel.shape[0]
    if frames < WINDOW_FRAMES:
        mel = torch.nn.functional.pad(mel, (0, 0, 0, WINDOW_FRAMES - frames))
    step = round(HOP * SAMPLE_RATE / HOP_LENGTH)
    starts = list(range(0, max(1, frames - WINDOW_FRAMES + 1), step))
    if frames > WINDOW_FRAMES and starts[-1] + WINDOW_FRAMES < frames:
        starts.append(frames - WINDOW_FRAMES)
    return mel, starts


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v / max(float(np.linalg.norm(v)), 1e-8), np.float32)


def cluster(
    x: np.ndarray, num: int | None = None, low: int | None = None, high: int | None = None
) -> np.ndarray:
    """A cluster index per row of ``x`` (unit vectors, float16 or float32): average linkage on
    cosine distance. ``x`` is never copied whole in float32 (a long meeting's windows)."""
    n = len(x)
    if n == 1 or num == 1:
        return np.zeros(n, np.int64)
    pick = np.linspace(0, n - 1, min(n, MAX_POINTS)).round().astype(np.int64)
    groups = _average_linkage(x[pick].astype(np.float32), num, low or 1, high or len(pick))
    centroids = np.stack([_mean(x[pick[g]]) for g in groups])
    for _ in range(2):  # every window joins its nearest centre; the centres follow
        labels = _nearest(x, centroids / np.linalg.norm(centroids, axis=1, keepdims=True))
        centroids = np.stack(
            [_mean(x[labels == k]) if np.any(labels == k) else centroids[k] for k in range(len(centroids))]
        )
    return labels


def _mean(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows.mean(axis=0, dtype=np.float32), np.float32)


def _nearest(x: np.ndarray, centres: np.ndarray, block: int = 4096) -> np.ndarray:
    """The index of the centre nearest each row of ``x``, a block of rows at a time."""
    rows = range(0, len(x), block)
    parts = [np.argmax(x[i : i + block].astype(np.float32) @ centres.T, axis=1) for i in rows]
    return np.concatenate(parts).astype(np.int64)


def _average_linkage(x: np.ndarray, num: int | None, low: int, high: int) -> list[list[int]]:
    """Clusters (lists of row indexes) from average-linkage merging. Only big enough clusters
    count as speakers (``MIN_WINDOWS``; the rest, stray windows over overlaps, coughs and turn
    edges, join the nearest speaker afterwards). The count is where two speakers further apart
    than ``THRESHOLD`` would merge (kept within ``low``..``high``). A given ``num`` keeps the
    ``num`` largest of those (a cluster too many is most often an outlier, which merging the
    closest pair would keep at the cost of two real voices); if there are fewer, smaller
    clusters count as speakers until there are ``num`` (someone who said little)."""
    n = len(x)
    merges = _merges(x)
    big = max(2, round(MIN_CLUSTER * n), min(MIN_WINDOWS, round(MIN_SHARE * n)))
    while True:
        found = _replay(n, merges, _estimate(merges, big, low, high), big)
        if num is None or len(found) >= num:
            return sorted(found, key=len, reverse=True)[: num or len(found)]
        if big <= 2:
            return _replay(n, merges, n - num, 1)
        big = max(2, big // 2)


def _merges(x: np.ndarray) -> list[tuple[int, int, float]]:
    """The whole average-linkage merge sequence of ``x``: (kept row, merged row, distance)."""
    n = len(x)
    dist = 1.0 - np.clip(x @ x.T, -1.0, 1.0).astype(np.float64)
    np.fill_diagonal(dist, np.inf)
    sizes = np.ones(n, np.int64)
    merges: list[tuple[int, int, float]] = []
    for _ in range(n - 1):
        i, j = divmod(int(np.argmin(dist)), n)
        merges.append((i, j, float(dist[i, j])))
        ni, nj = sizes[i], sizes[j]
        dist[i] = (dist[i] * ni + dist[j] * nj) / (ni + nj)  # Lance-Williams, average linkage
        dist[:, i] = dist[i]
        dist[i, i] = np.inf
        dist[j, :] = np.inf
        dist[:, j] = np.inf
        sizes[i], sizes[j] = ni + nj, 0
    return merges


def _estimate(merges: list[tuple[int, int, float]], big: int, low: int, high: int) -> int:
    """How many merges to make: up to the first that would join two speakers (clusters of
    ``big`` or more) further apart than ``THRESHOLD``, the count kept within ``low``..``high``."""
    sizes = np.ones(len(merges) + 1, np.int64)
    speakers = 0
    for step, (i, j, d) in enumerate(merges):
        ni, nj = sizes[i], sizes[j]
        if ni >= big and nj >= big and (speakers <= low or (speakers <= high and d > THRESHOLD)):
            return step
        speakers += int(ni + nj >= big) - int(ni >= big) - int(nj >= big)
        sizes[i], sizes[j] = ni + nj, 0
    return len(merges)


def _replay(n: int, merges: list[tuple[int, int, float]], steps: int, big: int) -> list[list[int]]:
    groups: dict[int, list[int]] = {i: [i] for i in range(n)}
    for i, j, _ in merges[:steps]:
        groups[i] += groups.pop(j)
    large = [g for g in groups.values() if len(g) >= big]
    return large or list(groups.values())


def _joined(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a - out[-1][1] < JOIN_GAP:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _timeline(
    regions: list[tuple[float, float]], spans: list[tuple[float, float, int]], labels: np.ndarray
) -> tuple[list[Turn], dict[int, int]]:
    """Each region split between its windows' speakers at the midpoints of their centres; a region
    without windows (too short) goes to the speaker of the nearest window. With the turns, each
    cluster's speaker number (by first appearance)."""
    centres = np.array([(a + b) / 2 for a, b, _ in spans])
    by_region: dict[int, list[int]] = {}
    for w, (_, _, r) in enumerate(spans):
        by_region.setdefault(r, []).append(w)
    raw: list[tuple[float, float, int]] = []
    for r, (a, b) in enumerate(regions):
        windows = by_region.get(r)
        if not windows:
            nearest = int(np.argmin(np.abs(centres - (a + b) / 2)))
            raw.append((a, b, int(labels[nearest])))
            continue
        start = a
        for w, nxt in zip(windows, [*windows[1:], None], strict=True):
            if nxt is None:
                raw.append((start, b, int(labels[w])))
            elif labels[nxt] != labels[w]:
                cut = (centres[w] + centres[nxt]) / 2
                raw.append((start, cut, int(labels[w])))
                start = cut
    merged: list[tuple[float, float, int]] = []
    for a, b, k in raw:
        if merged and merged[-1][2] == k and a - merged[-1][1] < JOIN_GAP:
            merged[-1] = (merged[-1][0], b, k)
        elif b > a:
            merged.append((a, b, k))
    order: dict[int, int] = {}
    for _, _, k in merged:
        order.setdefault(k, len(order))
    return [Turn(round(a, 3), round(b, 3), speaker_label(order[k])) for a, b, k in merged], order
