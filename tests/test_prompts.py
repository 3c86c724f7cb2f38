"""The committed prompts load, and a missing or broken one is a clear start-up error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from rtp.prompts import DEFAULT_DIRECTORY, PromptError, load_prompts


def test_committed_prompts_load() -> None:
    prompts = load_prompts()
    for samples in (prompts.paused, prompts.recording):
        assert samples.dtype == np.int16 and samples.ndim == 1
        assert 4000 < samples.size < 80000  # between half a second and ten seconds
        assert np.abs(samples.astype(np.int32)).max() > 3000  # not silent
    assert prompts.recording.size > prompts.paused.size  # the longer sentence


def test_committed_files_are_8k_mono_pcm16() -> None:
    for name in ("paused.wav", "recording.wav"):
        info = soundfile.info(str(DEFAULT_DIRECTORY / name))
        assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")


def test_prompts_are_frozen_and_read_only() -> None:
    prompts = load_prompts()
    with pytest.raises(AttributeError):
        prompts.paused = prompts.recording  # type: ignore[misc]
    with pytest.raises(ValueError):
        prompts.paused[0] = 1


def _write(path: Path, rate: int = 8000, channels: int = 1, subtype: str = "PCM_16") -> None:
    data = np.zeros((800, channels), dtype=np.int16)
    soundfile.write(str(path), data, rate, subtype=subtype)


def test_missing_file_names_it(tmp_path: Path) -> None:
    _write(tmp_path / "paused.wav")
    with pytest.raises(PromptError, match="recording.wav"):
        load_prompts(tmp_path)


def test_garbage_file_is_rejected(tmp_path: Path) -> None:
    _write(tmp_path / "paused.wav")
    (tmp_path / "recording.wav").write_bytes(b"not a wav at all")
    with pytest.raises(PromptError, match="recording.wav"):
        load_prompts(tmp_path)


@pytest.mark.parametrize(
    ("rate", "channels", "subtype"), [(16000, 1, "PCM_16"), (8000, 2, "PCM_16"), (8000, 1, "ULAW")]
)
def test_wrong_format_is_rejected(tmp_path: Path, rate: int, channels: int, subtype: str) -> None:
    _write(tmp_path / "paused.wav", rate, channels, subtype)
    _write(tmp_path / "recording.wav")
    with pytest.raises(PromptError, match="paused.wav"):
        load_prompts(tmp_path)


def test_custom_directory(tmp_path: Path) -> None:
    _write(tmp_path / "paused.wav")
    _write(tmp_path / "recording.wav")
    prompts = load_prompts(tmp_path)
    assert prompts.paused.size == 800
