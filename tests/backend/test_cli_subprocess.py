"""``histoclip`` run as a user runs it: a separate process, stderr a pipe (as in a log or CI).

What is checked here only shows outside the test process: the progress output a user reads
(one clean line per unit of work, nothing for cached work, no library bars), and the defaults
the commands take from the index, the captioner bundle and the slide's own metadata.

Commands that follow one another in a test run in one process (``histoclip_runs``): each is
a fresh ``main(argv)`` (its own LocalBackend; what a later one finds cached is on disk), with
its own slice of stdout and stderr, and the process pays Python's and torch's start-up once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--model", "test-tiny", "--mpp", "2.0", "--tile-size", "64", "--device", "cpu"]
#: A bar's line, as tqdm formats it: "<name>: 100%|...| 34/34 [00:01<00:00, 30.1tile/s, done]".
BAR = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")
NOISE = (" 0tile [", "?tile/s", "?slide/s", "it/s]", "Loading weights", "Writing model shards", "cached]")


#: Runs several ``histoclip`` command lines one after the other in one process; a line with
#: the separator and the run's number on stdout and on stderr starts each run's output, and the
#: exit codes follow the last one.
_RUNS = """
import json, sys
from backend.cli import main

sep, codes = sys.argv[1], []
for i, argv in enumerate(json.loads(sys.argv[2])):
    for stream in (sys.stdout, sys.stderr):
        print(f"{sep}{i}", file=stream, flush=True)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    codes.append(code if isinstance(code, int) else 1)
    sys.stdout.flush(); sys.stderr.flush()
print(f"{sep}codes " + json.dumps(codes), flush=True)
"""
_SEP = "@@histoclip-run "


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "HISTOCLIP_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": str(ROOT)}


def histoclip(*argv: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backend.cli", *argv], cwd=ROOT, env=_env(cache), capture_output=True,
                          text=True, timeout=600)


def histoclip_runs(*argvs: list[str], cache: Path) -> list[subprocess.CompletedProcess[str]]:
    """Each of ``argvs`` run as ``histoclip ARGV`` in turn, in one process (stderr a pipe)."""
    proc = subprocess.run([sys.executable, "-c", _RUNS, _SEP, json.dumps([list(a) for a in argvs])], cwd=ROOT,
                          env=_env(cache), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and f"{_SEP}codes " in proc.stdout, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    out, _, tail = proc.stdout.partition(f"{_SEP}codes ")
    codes = json.loads(tail)
    assert len(codes) == len(argvs), proc.stderr[-4000:]

    def parts(text: str) -> list[str]:
        head, *chunks = text.split(_SEP)  # head: written at start-up, before any run
        runs = [c.split("\n", 1)[1] if "\n" in c else "" for c in chunks]
        return [head + runs[0], *runs[1:]]

    return [subprocess.CompletedProcess(argv, code, o, e)
            for argv, code, o, e in zip(argvs, codes, parts(out), parts(proc.stderr), strict=True)]


def bar_lines(stderr: str) -> list[str]:
    """Lines of stderr that show a bar; a bar redrawn in place (``\\r``) would be one line of several."""
    for noise in NOISE:
        assert noise not in stderr, f"{noise!r} on stderr:\n{stderr}"
    lines = [ln for ln in stderr.splitlines() if BAR.search(ln)]
    assert all("\r" not in ln and len(BAR.findall(ln)) == 1 for ln in lines), stderr
    return lines


@pytest.mark.slow
def test_embed_draws_one_line_per_slide_and_slide_mpp_is_only_a_fallback(
    cmu_slide: Path, slides_dir: Path, tmp_path: Path
) -> None:
    kidney = slides_dir / "kidney-48-5.tif"  # no mpp in its metadata (and no tissue tile at 64 px)
    ndpi = slides_dir / "test3-DAPI-2-(387).ndpi"  # 0.2282 µm/px in its metadata
    run, cached = histoclip_runs(
        ["embed", str(cmu_slide), str(ndpi), str(kidney), "--slide-mpp", "1.0", *FAST],
        ["zero-shot", str(cmu_slide), "--labels", "tumor;stroma", "--out", str(tmp_path / "z"), "--slide-mpp", "1.0",
         *FAST],
        cache=tmp_path)
    assert run.returncode == 0, run.stderr
    # The slides that record their µm/px keep it: the grids of a run without --slide-mpp
    # (CMU-1 at 0.499: 12 x 9; the NDPI at 0.2282: 9 x 7); the kidney takes 1.0 (1493 x 901 px).
    assert "CMU-1-Small-Region.svs: 34 tiles embedded (test-tiny, grid 12 x 9)" in run.stdout
    assert re.search(r"test3-DAPI-2-\(387\)\.ndpi: \d+ tiles embedded \(test-tiny, grid 9 x 7\)", run.stdout)
    assert "kidney-48-5.tif: 0 tiles embedded (test-tiny, grid 7 x 12)" in run.stdout
    lines = bar_lines(run.stderr)
    # One line per slide encoded (the kidney had nothing to encode: no bar, not an empty one).
    assert [ln.split(":")[0] for ln in lines] == [cmu_slide.name, ndpi.name], run.stderr
    assert all(" 100%|" in ln and ln.rstrip().endswith("done]") for ln in lines), lines

    # Zero-shot of the cached slide, --slide-mpp again: the same 34 tiles, and no bar at all.
    run = cached
    assert run.returncode == 0, run.stderr
    assert "CMU-1-Small-Region.svs: 34 tiles:" in run.stdout
    assert bar_lines(run.stderr) == [], run.stderr


@pytest.mark.slow
def test_search_takes_the_model_and_tiles_the_index_records(cmu_slide: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    run, search, grow = histoclip_runs(
        ["index", str(cmu_slide), "--out", str(index), *FAST],
        # No --model, --mpp or --tile-size: test-tiny and 64 px at 2 µm/px, from the index.
        ["search", str(index), "--slide", str(cmu_slide), "--box", "600,600,600,600", "--include-query-slide",
         "--device", "cpu"],
        # Growing the index without --model keeps its model.
        ["index", str(cmu_slide), "--out", str(index), "--mpp", "2.0", "--tile-size", "64", "--device", "cpu"],
        cache=tmp_path)
    assert run.returncode == 0, run.stderr
    assert [ln.split(":")[0] for ln in bar_lines(run.stderr)] == ["cohort"]
    run = search
    assert run.returncode == 0, run.stderr
    rows = run.stdout.splitlines()
    assert rows[0].split()[:3] == ["RANK", "SCORE", "SLIDE"] and rows[1].split()[2] == cmu_slide.name
    assert bar_lines(run.stderr) == []  # the region's tiles come from the cache
    run = grow
    assert run.returncode == 0 and run.stdout.strip().endswith("(test-tiny)"), run.stderr


@pytest.mark.slow
def test_caption_takes_the_clip_model_the_bundle_records(cmu_slide: Path, tiny_captioner: Path, tmp_path: Path) -> None:
    run = histoclip("caption", str(cmu_slide), "--box", "600,600,600,600", "--captioner", str(tiny_captioner),
                    "--mpp", "2.0", "--tile-size", "64", "--device", "cpu", cache=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-3].startswith("1. ")  # n-best 3, best first
    assert "RANDOM weights" in run.stdout  # the bundle's test-tiny, announced as any model is
    bar_lines(run.stderr)  # no library bar (the decoder's "Loading weights")
