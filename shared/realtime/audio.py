"""The Realtime API's input formats as the engine's 16 kHz mono float32 samples.

``pcm16``: 16-bit little-endian PCM at 24 kHz (OpenAI's only PCM rate); ``g711_ulaw`` and
``g711_alaw``: G.711 at 8 kHz (telephony). Resampling is linear interpolation that carries its
position across appends, so a stream cut into any pieces gives the same samples.
"""

from __future__ import annotations

import numpy as np

from shared.engine.pcm import SAMPLE_RATE, Samples

#: Input rate of each format OpenAI defines.
RATES = {"pcm16": 24_000, "g711_ulaw": 8_000, "g711_alaw": 8_000}


def _ulaw_table() -> Samples:
    codes = ~np.arange(256, dtype=np.uint8)
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    value = np.where(sign != 0, 0x84 - magnitude, magnitude - 0x84)
    return (value / 32768.0).astype(np.float32)


def _alaw_table() -> Samples:
    codes = np.arange(256, dtype=np.uint8) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = (codes & 0x0F).astype(np.int32)
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1))
    value = np.where(sign != 0, magnitude, -magnitude)
    return (value / 32768.0).astype(np.float32)


_TABLES = {"g711_ulaw": _ulaw_table(), "g711_alaw": _alaw_table()}


class Decoder:
    """Bytes of one format in, 16 kHz samples out, across appends."""

    def __init__(self, audio_format: str) -> None:
        self.format = audio_format
        self.rate = RATES[audio_format]
        self._odd = b""  # a pcm16 sample split across two appends
        self._last = np.zeros(1, np.float32)  # the previous append's last input sample
        self._pos = 1.0  # next output position, in input samples from ``_last``
        self.samples_in = 0  # input samples so far

    def __call__(self, data: bytes) -> Samples:
        if self.format == "pcm16":
            data, self._odd = self._odd + data, b""
            if len(data) % 2:
                data, self._odd = data[:-1], data[-1:]
            raw = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
        else:
            raw = _TABLES[self.format][np.frombuffer(data, np.uint8)]
        self.samples_in += len(raw)
        return self._resample(raw)

    def _resample(self, raw: Samples) -> Samples:
        if not len(raw):
            return np.zeros(0, np.float32)
        series = np.concatenate((self._last, raw))
        step = self.rate / SAMPLE_RATE
        positions = np.arange(self._pos, len(series) - 1 + 1e-9, step)
        out: Samples = np.interp(positions, np.arange(len(series)), series).astype(np.float32)
        self._pos = (positions[-1] + step if len(positions) else self._pos) - (len(series) - 1)
        self._last = series[-1:]
        return out
