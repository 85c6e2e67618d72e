"""Decoding limits live in one place, ``backend.caption.DecodeConfig``, checked before work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backend.caption import DecodeConfig
from backend.errors import InputError


def test_n_best_above_the_beams_is_an_error_naming_both() -> None:
    with pytest.raises(InputError, match=r"n_best: 5 exceeds num_beams=3"):
        DecodeConfig(num_beams=3, n_best=5)


def test_defaults_are_the_documented_ones() -> None:
    config = DecodeConfig()
    assert (config.num_beams, config.max_new_tokens) == (3, 30)


def test_the_config_loads_without_torch() -> None:
    """The dock (no torch) checks its form with the same class the backend decodes by."""
    code = "import sys; from backend.caption import DecodeConfig; DecodeConfig(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "False"


def test_cli_caption_refuses_n_best_above_beams_before_any_work(
    cmu_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import backend.cli.slide_tasks as tasks
    from backend.cli import main

    def no_backend(*args: object) -> None:
        raise AssertionError("a backend was made (and slides embedded) before the options were checked")

    monkeypatch.setattr(tasks, "make_backend", no_backend)
    argv = ["caption", str(cmu_slide), "--box", "0,0,500,500", "--captioner", str(tmp_path),
            "--beams", "2", "--n-best", "4"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "n_best: 4 exceeds num_beams=2" in err


def test_cli_defaults_are_the_configs() -> None:
    from backend.cli import build_parser

    args = build_parser().parse_args(["caption", "s.svs", "--box", "0,0,1,1", "--captioner", "c"])
    assert (args.beams, args.max_tokens) == (DecodeConfig().num_beams, DecodeConfig().max_new_tokens)
