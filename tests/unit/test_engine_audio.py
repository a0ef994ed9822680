"""The engine's audio side: ffmpeg streamed in pieces with limits, and VAD chunking."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import numpy as np
import pytest

from devtools import audio as test_audio
from shared.core.errors import PermanentJobError
from shared.engine.chunker import MAX_CHUNK, Chunker, chunks
from shared.engine.pcm import PIECE_BYTES, SAMPLE_RATE, PcmStream


def _file(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def _speech(seconds: float, tmp_path: Path) -> np.ndarray:
    path = _file(tmp_path, f"speech-{seconds}.wav", test_audio.speech_wav(seconds))
    return np.concatenate(list(PcmStream(path, expected_seconds=None, max_seconds=1e6)))


def test_pcm_arrives_in_pieces_and_adds_up_to_the_recording(tmp_path):
    path = _file(tmp_path, "a.wav", test_audio.speech_wav(20.0))
    stream = PcmStream(path, expected_seconds=20.0, max_seconds=60)

    pieces = list(stream)

    assert len(pieces) > 1 and max(len(p) for p in pieces) <= PIECE_BYTES // 2
    assert sum(len(p) for p in pieces) == stream.samples == 20 * SAMPLE_RATE
    assert pieces[0].dtype == np.float32 and float(np.abs(pieces[0]).max()) <= 1.0


def test_audio_longer_than_the_limit_fails_whatever_its_header_said(tmp_path):
    path = _file(tmp_path, "a.wav", test_audio.speech_wav(20.0))

    with pytest.raises(
        PermanentJobError, match=r"longer than this server's limit of 10 s \(MAX_AUDIO_SECONDS\)"
    ):
        list(PcmStream(path, expected_seconds=5.0, max_seconds=10))


def test_a_decoder_that_hangs_is_stopped_with_a_reason(tmp_path):
    stream = PcmStream("x", expected_seconds=4.0, max_seconds=60, command=["sleep", "30"], base_seconds=1.0)

    with pytest.raises(PermanentJobError, match=r"decoding the audio took longer than 2 s and was stopped"):
        list(stream)


def test_a_playlist_naming_a_real_file_on_disk_is_not_decoded(tmp_path):
    wav = _file(tmp_path, "secret.wav", test_audio.speech_wav(2.0))
    media = str(tmp_path / "secret.mp3")
    subprocess.run(["ffmpeg", "-v", "error", "-i", wav, media], check=True)
    playlist = _file(
        tmp_path,
        "list.m3u8",
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\n{media}\n#EXT-X-ENDLIST\n".encode(),
    )
    plain = subprocess.run(["ffmpeg", "-v", "error", "-i", playlist, "-f", "s16le", "-"], capture_output=True)
    assert len(plain.stdout) > SAMPLE_RATE  # ffmpeg on its own follows the playlist to the file

    stream = PcmStream(playlist, expected_seconds=None, max_seconds=60)
    with pytest.raises(
        PermanentJobError, match=r"^the audio could not be decoded: .*list\.m3u8: Invalid argument"
    ):
        list(stream)
    assert stream.samples == 0


def test_truncated_audio_fails_with_a_reason(tmp_path):
    whole = tmp_path / "whole.mp3"
    test_audio.speech_mp3(20, whole)
    path = _file(tmp_path, "cut.mp3", whole.read_bytes()[: whole.stat().st_size // 2])

    with pytest.raises(
        PermanentJobError, match=r"looks truncated: its header promises 20.0 s but only 9.9 s could"
    ):
        list(PcmStream(path, expected_seconds=20.0, max_seconds=60))


def test_a_damaged_file_fails_with_ffmpegs_reason(tmp_path):
    whole = test_audio.speech_wav(10.0)
    path = _file(tmp_path, "cut.wav", whole[: len(whole) // 2 + 1])

    with pytest.raises(
        PermanentJobError, match=r"^the audio could not be decoded: .*cut.wav: corrupt input packet"
    ):
        list(PcmStream(path, expected_seconds=10.0, max_seconds=60))


def test_silence_makes_no_chunk(tmp_path):
    assert list(chunks(iter([_silence(70.0)]))) == []


def test_speech_between_long_silences_makes_one_chunk_each_on_the_20_ms_grid(tmp_path):
    speech = _speech(2.0, tmp_path)
    audio = np.concatenate([speech, _silence(10.0), speech, _silence(10.0)])

    found = list(chunks(iter(np.array_split(audio, 7))))

    assert [c.index for c in found] == [0, 1]
    assert found[0].start == 0  # padding before speech at the very start reaches 0
    assert 11.5 * SAMPLE_RATE <= found[1].start <= 12.0 * SAMPLE_RATE  # 0.4 s before the speech
    assert all(c.start % 320 == 0 for c in found)
    assert all(len(c.audio) <= 3 * SAMPLE_RATE for c in found)  # the long silence is not kept
    np.testing.assert_array_equal(found[1].audio, audio[found[1].start : found[1].end])


def _chunked(path):
    """The file streamed through the chunker: its stream, all its samples and the chunks."""
    stream = PcmStream(str(path), expected_seconds=None, max_seconds=1e6)
    pieces = list(stream)
    chunker = Chunker()
    found = [c for piece in pieces for c in chunker.feed(piece)]
    found += list(chunker.finish(stream.samples))
    audio = np.concatenate(pieces)
    return stream, audio, found


def test_long_speech_is_cut_at_a_pause_into_chunks_of_at_most_30_s(tmp_path):
    path = tmp_path / "long.mp3"
    test_audio.speech_mp3(100, path)
    stream, audio, found = _chunked(path)

    assert all(len(c.audio) <= MAX_CHUNK for c in found)
    assert all(a.end == b.start for a, b in itertools.pairwise(found))  # speech all along
    assert found[0].start == 0 and found[-1].end == stream.samples
    # Cut in the latest pause that fits: the phrase's short pause (0.22 s) after "api." when it
    # comes later than the long one between phrases, so every chunk but the last is over 27 s.
    assert all(len(c.audio) >= 27 * SAMPLE_RATE for c in found[:-1])
    for cut in [c.end for c in found[:-1]]:  # in silence: 20 ms either side are quiet
        around = audio[cut - 320 : cut + 320]
        assert np.sqrt(np.mean(around**2)) < 0.01


def test_chunks_carry_their_speech_regions_for_the_diarizer(tmp_path):
    path = tmp_path / "long.mp3"
    test_audio.speech_mp3(65, path)
    stream, audio, found = _chunked(path)

    for chunk in found:
        regions = list(chunk.speech)
        assert regions and all(chunk.start <= a < b <= chunk.end for a, b in regions)
        assert all(b1 < a2 for (_, b1), (a2, _) in itertools.pairwise(regions))  # apart, in order
        assert all(np.sqrt(np.mean(audio[a:b] ** 2)) > 0.01 for a, b in regions)  # voiced
    # Speech cut where a chunk ends goes on in the next: together the regions are all the speech.
    voiced = sum(b - a for c in found for a, b in c.speech)
    assert 0.6 * stream.samples < voiced < stream.samples
