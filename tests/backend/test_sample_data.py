from __future__ import annotations

from pathlib import Path

import pytest

from backend.sample_data import CMU_SMALL_REGION, DownloadError, SampleFile, sample_slide


def test_sample_is_downloaded_once_checked_and_cached(cmu_slide: Path, tmp_path: Path) -> None:
    # A file:// URL stands in for the OpenSlide server: same code path, no network.
    local = SampleFile(CMU_SMALL_REGION.name, cmu_slide.resolve().as_uri(), CMU_SMALL_REGION.sha256)
    path = sample_slide(local, cache_dir=tmp_path)
    assert path == tmp_path / "samples" / "CMU-1-Small-Region.svs"
    assert path.read_bytes() == cmu_slide.read_bytes()
    # Second call: served from the cache even if the source has gone.
    gone = SampleFile(local.name, (tmp_path / "nowhere.svs").as_uri(), local.sha256)
    assert sample_slide(gone, cache_dir=tmp_path) == path


def test_checksum_mismatch_keeps_nothing(cmu_slide: Path, tmp_path: Path) -> None:
    bad = SampleFile("CMU-1-Small-Region.svs", cmu_slide.resolve().as_uri(), "0" * 64)
    with pytest.raises(DownloadError, match=r"CMU-1-Small-Region\.svs: downloaded file .* expected 0{64}"):
        sample_slide(bad, cache_dir=tmp_path)
    assert list((tmp_path / "samples").iterdir()) == []


def test_offline_download_fails_with_one_clear_line(tmp_path: Path) -> None:
    # Port 9 on loopback refuses at once: the shape of an offline machine, without the network.
    offline = SampleFile("CMU-1-Small-Region.svs", "http://127.0.0.1:9/CMU-1-Small-Region.svs", "0" * 64)
    with pytest.raises(DownloadError) as info:
        sample_slide(offline, cache_dir=tmp_path, timeout=5)
    msg = str(info.value)
    assert "could not download" in msg and "--slide PATH" in msg and "\n" not in msg
    assert list((tmp_path / "samples").iterdir()) == []
