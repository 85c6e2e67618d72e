"""The reader: real slides as lazy multiscale layers with their scale; never raises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_histoclip._reader import GuardedLevel, get_reader, read_slides

SLIDES = {
    # name: (level-0 (height, width), mpp or None)
    "CMU-1-Small-Region.svs": ((2967, 2220), 0.499),
    "tcga-cr-7395-01a-01-ts1.svs": ((3567, 4443), None),
    "test3-DAPI-2-(387).ndpi": ((4864, 3968), 0.2282),
    "kidney-48-5.tif": ((901, 1493), None),
}


@pytest.mark.parametrize("name", sorted(SLIDES))
def test_reader_opens_each_slide_as_lazy_multiscale(slides_dir: Path, name: str, notes) -> None:
    from napari.components import ViewerModel

    path = slides_dir / name
    reader = get_reader(str(path))
    assert reader is not None
    (layer_data,) = reader(str(path))
    levels, kwargs, kind = layer_data
    (h, w), mpp = SLIDES[name]
    assert kind == "image" and kwargs["rgb"] and kwargs["multiscale"]
    assert levels[0].shape == (h, w, 3) and levels[0].dtype == np.uint8
    # Lazy: array-likes over dask, never numpy arrays of a whole level.
    assert all(isinstance(lvl, GuardedLevel) for lvl in levels)
    assert [lvl.shape[0] for lvl in levels] == sorted((lvl.shape[0] for lvl in levels), reverse=True)
    assert max(levels[-1].shape[:2]) <= 2048  # a zoomed-out view never draws from a big level
    if mpp is None:
        assert kwargs["scale"] == (1.0, 1.0) and "units" not in kwargs
        assert any("no microns-per-pixel" in m for m in notes.infos)
    else:
        assert kwargs["scale"] == pytest.approx((mpp, mpp), rel=1e-3)
        assert kwargs["units"] == ("um", "um")
    meta = kwargs["metadata"]["histoclip"]
    assert Path(meta["path"]).resolve() == path.resolve() and (meta["height"], meta["width"]) == (h, w)

    viewer = ViewerModel()
    layer = viewer.add_layer(__import__("napari").layers.Layer.create(*layer_data))
    assert layer.multiscale and layer.rgb
    # Pixel centres span [0, n - 1] level-0 pixels, times the scale.
    assert layer.extent.world[1][:2] == pytest.approx((np.array([h, w]) - 1) * (mpp or 1.0), rel=1e-3)
    assert not notes.errors


def test_slicing_reads_only_the_tiles_asked_for(cmu_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A viewport-sized slice reads a few chunks, not the level."""
    from backend.slides.slide import Slide

    pixels_read = []
    original = Slide.read_region

    def counting(self, location, level, size):  # noqa: ANN001
        pixels_read.append(size[0] * size[1])
        return original(self, location, level, size)

    monkeypatch.setattr(Slide, "read_region", counting)
    ((levels, _, _),) = read_slides(str(cmu_slide))
    pixels_read.clear()
    window = levels[0][1000:1200, 500:700]
    assert window.shape == (200, 200, 3) and window.dtype == np.uint8 and window.mean() < 250  # tissue
    assert 0 < sum(pixels_read) <= 4 * 512 * 512 < 2220 * 2967


def test_added_overview_levels_average_the_level_above(cmu_slide: Path) -> None:
    """CMU-1-Small-Region has one level (2967 px high): the reader adds a 2x-averaged one."""
    ((levels, kwargs, _),) = read_slides(str(cmu_slide))
    assert [lvl.shape for lvl in levels] == [(2967, 2220, 3), (1483, 1110, 3)]
    block = levels[0][1000:1040, 600:640].astype(float).reshape(20, 2, 20, 2, 3).mean(axis=(1, 3))
    assert np.abs(levels[1][500:520, 300:320].astype(float) - block).max() <= 0.5 + 1e-9
    assert kwargs["metadata"]["level_downsamples"] == [1.0, 2.0]


@pytest.mark.parametrize("path", ["README.md", "tiles/no-tissue.png", "tiles"])
def test_not_slides_get_no_reader(testdata: Path, path: str) -> None:
    assert get_reader(str(testdata / path)) is None


def test_get_reader_accepts_dicom_folders(tmp_path: Path) -> None:
    (tmp_path / "wsi").mkdir()
    (tmp_path / "wsi" / "level-0.dcm").write_bytes(b"")
    assert get_reader(str(tmp_path / "wsi")) is not None
    assert get_reader([str(tmp_path / "wsi"), str(tmp_path / "x.txt")]) is None


@pytest.mark.parametrize(
    ("name", "cause"),
    [("broken.svs", "not a slide"), ("unopenable.tiff", "52479"), ("unreadable.svs", "Bogus marker")],
)
def test_bad_slides_become_one_notification(testdata: Path, name: str, cause: str, notes) -> None:
    path = testdata / "bad" / name
    reader = get_reader(str(path))
    assert reader is not None
    assert reader(str(path)) == [(None,)]  # napari's "read, nothing to show"
    (message,) = notes.errors
    assert message.startswith(f"{name}: ") and cause in message
    assert "Traceback" not in message


@pytest.fixture
def our_plugin(npe2pm):
    """npe2's isolated plugin manager with only our manifest registered."""
    from npe2 import PluginManifest

    npe2pm.register(PluginManifest.from_file(Path(__file__).resolve().parents[2] / "napari.yaml"))
    return npe2pm


def test_viewer_open_uses_our_reader(cmu_slide: Path, our_plugin, notes) -> None:
    from napari.components import ViewerModel

    viewer = ViewerModel()
    (layer,) = viewer.open(str(cmu_slide), plugin="napari-histoclip")
    assert layer.multiscale and layer.scale[-1] == pytest.approx(0.499)
    assert not notes.errors


def test_viewer_open_of_a_bad_slide_does_not_raise(testdata: Path, our_plugin, notes) -> None:
    from napari.components import ViewerModel

    viewer = ViewerModel()
    layers = viewer.open(str(testdata / "bad" / "broken.svs"), plugin="napari-histoclip")
    assert layers == [] and len(viewer.layers) == 0
    assert notes.errors and "broken.svs" in notes.errors[0]


def test_good_and_bad_together(testdata: Path, notes) -> None:
    out = read_slides([str(testdata / "bad" / "broken.svs"), str(testdata / "slides" / "kidney-48-5.tif")])
    assert len(out) == 1 and out[0][2] == "image"
    assert len(notes.errors) == 1


def test_a_tile_that_fails_later_is_drawn_white(notes) -> None:
    class Failing:
        shape, dtype, ndim, size = (600, 800, 3), np.dtype(np.uint8), 3, 600 * 800 * 3

        def __getitem__(self, key):  # noqa: ANN001
            raise OSError("Bogus marker length")

    level = GuardedLevel(Failing(), "x.svs")
    out = level[10:20, 0:800:2]
    assert out.shape == (10, 400, 3) and (out == 255).all()
    level[0:1, 0:1]
    assert len(notes.errors) == 1 and notes.errors[0].startswith("x.svs: ") and "Bogus" in notes.errors[0]


def test_sample_data_uses_the_cache_and_says_so_offline(cmu_slide: Path, monkeypatch, tmp_path: Path, notes) -> None:
    import shutil

    import backend.sample_data as sd
    from napari_histoclip._sample_data import cmu_small_region

    monkeypatch.setenv("HISTOCLIP_CACHE_DIR", str(tmp_path))

    def offline(*args, **kwargs):  # noqa: ANN002, ANN003
        raise OSError("Network is unreachable")

    monkeypatch.setattr(sd.urllib.request, "urlopen", offline)
    assert cmu_small_region() == []
    (message,) = notes.errors
    assert "CMU-1-Small-Region.svs" in message and "Offline" in message

    (tmp_path / "samples").mkdir(exist_ok=True)
    shutil.copy(cmu_slide, tmp_path / "samples" / "CMU-1-Small-Region.svs")
    (layer,) = cmu_small_region()
    assert layer[1]["name"] == "CMU-1-Small-Region.svs" and layer[1]["scale"] == pytest.approx((0.499, 0.499))


# --- DICOM, folders, handles and names ---------------------------------------------------------


@pytest.fixture(scope="module")
def dicom_wsi(tmp_path_factory: pytest.TempPathFactory, cmu_slide: Path) -> Path:
    from tests.support.dicom_data import dicom_wsi_folder

    return dicom_wsi_folder(tmp_path_factory, cmu_slide)


@pytest.mark.slow
def test_dicom_folder_and_its_files_open_as_one_slide(dicom_wsi: Path, notes) -> None:
    member = sorted(dicom_wsi.glob("*.dcm"))[0]
    for path in (dicom_wsi, member):
        reader = get_reader(str(path))
        assert reader is not None
        (layer_data,) = reader(str(path))
        levels, kwargs, kind = layer_data
        assert kind == "image" and levels[0].shape == (2967, 2220, 3)
        assert kwargs["scale"] == pytest.approx((0.499, 0.499))  # the mpp the DICOM records
        assert Path(kwargs["metadata"]["histoclip"]["path"]) == dicom_wsi
        tile = np.asarray(levels[0][1000:1064, 1000:1064])
        assert tile.shape == (64, 64, 3) and tile.std() > 5
    assert not notes.errors


def test_folder_named_like_a_slide_gets_our_message(tmp_path: Path, notes) -> None:
    folder = tmp_path / "case.svs"
    folder.mkdir()
    reader = get_reader(str(folder))
    assert reader is not None  # ours, so napari does not answer "refused the file"
    assert reader(str(folder)) == [(None,)]
    (message,) = notes.errors
    assert message.startswith("case.svs: is a folder, not a slide file")


def test_a_slide_whose_pixels_fail_is_closed(testdata: Path, monkeypatch: pytest.MonkeyPatch, notes) -> None:
    import napari_histoclip._reader as reader_module

    opened = []
    original = reader_module.open_slide_quietly

    def spy(path, **kwargs):
        slide = original(path, **kwargs)
        opened.append(slide)
        return slide

    monkeypatch.setattr(reader_module, "open_slide_quietly", spy)
    assert read_slides(str(testdata / "bad" / "unreadable.svs")) == [(None,)]
    (slide,) = opened
    assert slide._closed  # released at once, not left to the garbage collector
    assert "Bogus marker" in notes.errors[0]


def test_layer_names_read_no_slide_content(cmu_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dask names come from stat, not the ~3 MiB content fingerprint: opening (on napari's
    UI thread) and reopening on every hit click read nothing for them."""
    import backend.slides.slide as slide_module

    def no_hashing(path):
        raise AssertionError(f"the reader hashed {path}")

    monkeypatch.setattr(slide_module, "slide_fingerprint", no_hashing)
    copy = tmp_path / "copy.svs"
    copy.write_bytes(cmu_slide.read_bytes())
    first = read_slides(str(copy))[0][0]
    again = read_slides(str(copy))[0][0]
    assert first[0]._level.name == again[0]._level.name  # same file, same dask name
    copy.write_bytes(cmu_slide.read_bytes()[:-1] + b"\0")  # rewritten: a new name
    changed = read_slides(str(copy))[0][0]
    assert changed[0]._level.name != first[0]._level.name


@pytest.mark.parametrize(
    ("name", "both"),
    [("x.svs", True), ("x.tif", True), ("x.ndpi", True), ("x.dcm", True), ("x.mrxs", False), ("x.svslide", False)],
)
def test_why_napari_asks_which_reader(our_plugin, tmp_path: Path, name: str, both: bool) -> None:
    """napari's own reader also claims *.svs, *.tif, *.ndpi, *.dcm... and npe2 has no reader
    priority: napari asks (MultipleReaderError; a dialog in the GUI) until the user saves a
    preference, except for the formats only we claim. With the preference saved it opens ours."""
    import napari_builtins
    from napari.components import ViewerModel
    from napari.errors import MultipleReaderError
    from napari.plugins._npe2 import get_readers
    from napari.settings import get_settings
    from npe2 import PluginManifest

    our_plugin.register(PluginManifest.from_file(Path(napari_builtins.__file__).parent / "builtins.yaml"))
    path = tmp_path / name
    readers = set(get_readers(str(path)))
    assert readers == ({"napari", "napari-histoclip"} if both else {"napari-histoclip"})
    if not both:
        return
    path.write_bytes(b"junk")
    viewer = ViewerModel()
    with pytest.raises(MultipleReaderError):  # what File > Open and drag-and-drop do (plugin=None)
        viewer.open(str(path), plugin=None)
    settings = get_settings()
    suffix = "*" + path.suffix
    settings.plugins.extension2reader = {**settings.plugins.extension2reader, suffix: "napari-histoclip"}
    try:
        assert viewer.open(str(path), plugin=None) == []  # ours: a notification, no dialog, no exception
    finally:
        settings.plugins.extension2reader = {
            k: v for k, v in settings.plugins.extension2reader.items() if k != suffix
        }


def test_manifest_claims_exactly_the_formats_the_reader_takes() -> None:
    import yaml

    from backend.slides import SLIDE_SUFFIXES

    manifest = yaml.safe_load((Path(__file__).resolve().parents[2] / "napari.yaml").read_text())
    (reader,) = manifest["contributions"]["readers"]
    assert sorted(reader["filename_patterns"]) == sorted("*" + s for s in SLIDE_SUFFIXES)
    for suffix in SLIDE_SUFFIXES:
        assert get_reader(f"/nowhere/x{suffix}") is not None


def test_a_vsi_gets_the_remedy_not_its_preview(tmp_path: Path, notes) -> None:
    import tifffile

    vsi = tmp_path / "case.vsi"
    tifffile.imwrite(vsi, np.full((64, 96, 3), 120, dtype=np.uint8), photometric="rgb")
    assert read_slides(str(vsi)) == [(None,)]
    (message,) = notes.errors
    assert message.startswith("case.vsi: Olympus/Evident VSI") and "_case_/" in message


def test_the_dock_and_the_backend_use_the_same_folder_rule(tmp_path: Path) -> None:
    from backend.slides import expand_slides, slide_target
    from napari_histoclip._reader import slide_path
    from napari_histoclip._widgets._search import slides_in

    for name in ("b.svs", "a.ndpi", "c.vsi", ".hidden.svs", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "_c_").mkdir()
    (tmp_path / "dicom-case").mkdir()
    (tmp_path / "dicom-case" / "level-0.dcm").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    assert [Path(p).name for p in slides_in(tmp_path)] == ["a.ndpi", "b.svs", "c.vsi", "dicom-case"]
    assert slides_in(tmp_path) == expand_slides([tmp_path])
    assert slides_in(tmp_path / "empty") == []
    for child in [*tmp_path.iterdir(), tmp_path / "dicom-case" / "level-0.dcm"]:
        assert slide_path(child) == slide_target(child)


def test_a_truncated_slide_is_one_notification_and_nothing_on_the_console(
    cmu_slide: Path, tmp_path: Path, notes, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    cut = tmp_path / "cut.svs"
    cut.write_bytes(cmu_slide.read_bytes()[:500_000])
    caplog.set_level("INFO")
    assert read_slides(str(cut)) == [(None,)]
    (message,) = notes.errors
    assert message.startswith("cut.svs: the file is truncated or damaged")
    assert capfd.readouterr() == ("", "")
    assert [r.getMessage() for r in caplog.records if r.levelno >= 20] == []
