"""Data preparation: near-duplicate grouping on real tiles, caption merging and explosion,
splits without shared images, table errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from backend.errors import InputError
from training.__main__ import main
from training.data.phash import DedupConfig, fingerprint, group_images, hamming, near_duplicate_groups, phash
from training.data.prepare import main as prepare_main
from training.data.prepare import normalise_captions

TISSUE = ["kather1.tif", "kather2.tif", "TCGA-HE-7130-01Z-00-DX1.png", "medium-nuclei-score-level1.png",
          "tissue-level2-1784-6289-5880-10386.png", "no-tissue-red-pen.png"]
BLANK = ["no-tissue.png", "almost-white-1.png"]


def _tile(testdata: Path, name: str) -> Image.Image:
    im = Image.open(testdata / "tiles" / name).convert("RGB")
    return im.crop((0, 0, 512, 512)) if min(im.size) > 512 else im


def _cursor(im: Image.Image) -> Image.Image:
    """A mouse pointer (black-outlined white arrow, 22 px tall) drawn over the image."""
    im = im.copy()
    x, y = im.size[0] // 3, im.size[1] // 3
    arrow = [(0, 0), (0, 18), (5, 14), (9, 22), (12, 20), (8, 13), (14, 13)]
    ImageDraw.Draw(im).polygon([(x + a, y + b) for a, b in arrow], fill="white", outline="black")
    return im


def _jpeg(im: Image.Image, quality: int = 60) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _near_copies(im: Image.Image) -> dict[str, Image.Image]:
    w, h = im.size
    return {
        "copy": im.copy(),
        "resized": im.resize((w * 5 // 8, h * 5 // 8), Image.Resampling.BILINEAR),
        "jpeg": _jpeg(im),
        "cursor": _cursor(im),
        "all": _cursor(_jpeg(im.resize((w * 5 // 8, h * 5 // 8)), 50)),
    }


@pytest.fixture(scope="module")
def tile_files(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Each real tile with its near-copies, as PNG files: name -> [original, copies...]."""
    root = tmp_path_factory.mktemp("tiles")
    out: dict[str, list[Path]] = {}
    for name in TISSUE + BLANK:
        im = _tile(testdata, name)
        stem = Path(name).stem
        files = [root / f"{stem}.png"]
        im.save(files[0])
        for kind, copy in _near_copies(im).items():
            files.append(root / f"{stem}-{kind}.png")
            copy.save(files[-1])
        out[name] = files
    return out


def test_near_copies_merge_and_distinct_tiles_do_not(tile_files):
    paths = [p for files in tile_files.values() for p in files]
    groups = group_images(paths)
    owner = [name for name, files in tile_files.items() for _ in files]
    for name in tile_files:
        ids = {g for g, o in zip(groups, owner) if o == name}
        assert len(ids) == 1, f"{name}: its near-copies were split into groups {ids}"
    assert len(set(groups)) == len(tile_files), "distinct tiles were merged"


def test_threshold_is_tunable(testdata):
    im = _tile(testdata, "kather1.tif")
    d = int(hamming(phash(im), phash(_near_copies(im)["all"])))
    assert 0 < d <= DedupConfig().threshold
    prints = [fingerprint(x) for x in (im, _near_copies(im)["all"])]
    from training.data.phash import Fingerprints

    fp = Fingerprints(np.array([p[0] for p in prints], np.uint64), np.array([p[1] for p in prints]),
                      np.array([p[2] for p in prints]))
    assert near_duplicate_groups(fp, DedupConfig(threshold=d)).tolist() == [0, 0]
    assert near_duplicate_groups(fp, DedupConfig(threshold=d - 1)).tolist() == [0, 1]
    with pytest.raises(InputError, match="dedup threshold"):
        DedupConfig(threshold=64)


def test_blank_tiles_compare_by_colour(testdata):
    """A blank tile's hash is noise (a cursor is all there is to see): blank tiles are matched by
    mean colour, so a cursor on a blank tile is still a near-copy, and two blanks of different
    brightness are not."""
    from training.data.phash import Fingerprints

    blank = _tile(testdata, "no-tissue.png")
    white = _tile(testdata, "almost-white-1.png")
    assert hamming(phash(blank), phash(_cursor(blank))) > DedupConfig().threshold  # why the hash alone fails
    prints = [fingerprint(x) for x in (blank, _cursor(blank), white, _cursor(white))]
    assert all(p[1] < DedupConfig().flat_contrast for p in prints)
    fp = Fingerprints(np.array([p[0] for p in prints], np.uint64), np.array([p[1] for p in prints]),
                      np.array([p[2] for p in prints]))
    assert near_duplicate_groups(fp).tolist() == [0, 0, 1, 1]


def _write_pairs(tile_files, root: Path) -> pd.DataFrame:
    """A pairs table: every tile file with a caption naming its source tile; the original file
    listed twice with a second caption (a multi-caption image)."""
    rows = []
    for name, files in tile_files.items():
        stem = Path(name).stem
        for f in files:
            rows.append({"file": str(f.relative_to(root)), "text": f"tile {stem}"})
        rows.append({"file": str(files[0].relative_to(root)), "text": f"another caption of {stem}"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_prepare_merges_explodes_and_splits_by_image(tile_files, tmp_path, suffix):
    root = next(iter(tile_files.values()))[0].parent
    df = _write_pairs(tile_files, root)
    table = tmp_path / f"pairs{suffix}"
    {".csv": lambda: df.to_csv(table, index=False), ".json": lambda: df.to_json(table, orient="records"),
     ".parquet": lambda: df.to_parquet(table)}[suffix]()
    out = tmp_path / "out"
    assert main(["prepare", str(table), "--out", str(out), "--image-column", "file", "--caption-column", "text",
                 "--image-root", str(root), "--val-fraction", "0.25", "--test-fraction", "0.25",
                 "--format", "csv"]) == 0

    splits = {s: pd.read_csv(out / f"{s}.csv") for s in ("train", "val", "test")}
    assert all(len(s) for s in splits.values())
    everything = pd.concat(splits.values())
    # one row per (group, caption): each tile's group carries both its captions, once each
    assert len(everything) == 2 * len(tile_files)
    assert everything.groupby("group").caption.apply(sorted).apply(len).eq(2).all()
    images = [set(s.image) for s in splits.values()]
    assert not (images[0] & images[1] or images[0] & images[2] or images[1] & images[2])
    dups = pd.read_csv(out / "duplicates.csv")
    assert len(dups) == sum(len(f) for f in tile_files.values())
    assert dups.groupby("group").representative.nunique().eq(1).all()
    summary = json.loads((out / "prepare.json").read_text())["result"]
    assert summary["groups"] == len(tile_files)
    assert summary["images_merged"] == sum(len(f) for f in tile_files.values()) - len(tile_files)


def test_prepare_errors_name_file_and_column(tile_files, tmp_path, capsys):
    root = next(iter(tile_files.values()))[0].parent
    table = tmp_path / "pairs.csv"
    _write_pairs(tile_files, root).to_csv(table, index=False)
    args = [str(table), "--out", str(tmp_path / "o"), "--image-column", "path", "--caption-column", "text"]
    with pytest.raises(InputError) as err:
        prepare_main(args)
    message = str(err.value)
    assert "pairs.csv" in message and "'path'" in message and "columns present: file, text" in message
    # the command line prints the same one line, no traceback
    assert main(["prepare", *args]) == 1
    assert capsys.readouterr().err.strip() == f"python -m training prepare: error: {err.value}"

    pd.DataFrame({"image": ["gone.png", "also-gone.png"], "caption": ["x", "y"]}).to_csv(table, index=False)
    with pytest.raises(InputError, match=r"2 image\(s\) in column 'image' not found: .*gone\.png"):
        prepare_main([str(table), "--out", str(tmp_path / "o")])

    (tmp_path / "bad.png").write_bytes(b"not a png")
    pd.DataFrame({"image": ["bad.png"], "caption": ["x"]}).to_csv(table, index=False)
    with pytest.raises(InputError, match=r"bad\.png: not a readable image"):
        prepare_main([str(table), "--out", str(tmp_path / "o")])

    with pytest.raises(InputError, match="unknown table type '.txt'"):
        prepare_main([str(tmp_path / "pairs.txt"), "--out", str(tmp_path / "o")])
    assert main(["nonsense"]) == 2


def test_normalise_captions():
    assert normalise_captions(" a cell ") == ["a cell"]
    assert normalise_captions('["a", " b ", ""]') == ["a", "b"]
    assert normalise_captions(["a", ["b"]]) == ["a", "b"]
    assert normalise_captions(np.array(["x", "y"])) == ["x", "y"]
    assert normalise_captions(None) == [] and normalise_captions(float("nan")) == [] and normalise_captions("") == []
