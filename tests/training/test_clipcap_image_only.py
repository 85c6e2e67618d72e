"""ClipCap's prefix comes from any image embedding: ``encode`` and ``clipcap`` with an image-only
encoder (``test-tiny``'s image tower as a ``towers: "image"`` bundle), and the captioner bundle
captions a region of a real slide through ``histoclip caption`` with that encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tests.support.decoders import tiny_gpt2, train_bpe_tokenizer
from training.__main__ import main

pytestmark = pytest.mark.slow  # encode ~60 tiles, train a 2-layer GPT-2 for two epochs

CAPTIONS = {
    "kather2.tif": ["colorectal mucosa with tubular glands", "glandular colorectal epithelium"],
    "kather1.tif": ["smooth muscle with elongated nuclei", "pink smooth muscle fibres"],
    "no-tissue.png": ["blank background slide area", "empty glass with no tissue"],
}


def test_clipcap_trains_on_an_image_only_encoder_and_captions_a_region(
    testdata: Path, image_only_model: Path, cmu_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from backend.caption import read_captioner_manifest
    from backend.cli import main as histoclip

    rows = []
    (tmp_path / "img").mkdir()
    for name, captions in CAPTIONS.items():
        im = Image.open(testdata / "tiles" / name).convert("RGB")
        for i in range(8):
            side = min(im.size) // 2
            crop = im.crop((i * 7, i * 5, i * 7 + side, i * 5 + side)).resize((64, 64))
            crop.save(tmp_path / "img" / f"{Path(name).stem}-{i}.png")
            rows.append({"path": f"img/{Path(name).stem}-{i}.png", "captions": json.dumps(captions)})
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    data = tmp_path / "data"
    assert main(["prepare", str(tmp_path / "pairs.csv"), "--out", str(data), "--image-column", "path",
                 "--caption-column", "captions", "--val-fraction", "0.2", "--test-fraction", "0.1"]) == 0
    splits = [str(data / f"{s}.parquet") for s in ("train", "val")]
    assert main(["encode", *splits, "--model", str(image_only_model), "--out", str(tmp_path / "emb"),
                 "--device", "cpu"]) == 0
    texts = [c for caps in CAPTIONS.values() for c in caps]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    tiny_gpt2(tokenizer, n_layer=2, n_embd=64).save_pretrained(tmp_path / "decoder")
    tokenizer.save_pretrained(tmp_path / "decoder")
    run = tmp_path / "run"
    assert main(["clipcap", "--train", splits[0], "--val", splits[1], "--embeddings", str(tmp_path / "emb"),
                 "--out", str(run), "--decoder", str(tmp_path / "decoder"), "--prefix-length", "4",
                 "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "2", "--device", "cpu", "--epochs", "2"]) == 0
    manifest = read_captioner_manifest(run / "captioner")
    assert str(manifest["clip_model_id"]).startswith("bundle:tiny-vision@")  # the prefix's encoder

    capsys.readouterr()
    assert histoclip(["caption", str(cmu_slide), "--box", "600,600,800,800", "--captioner", str(run / "captioner"),
                      "--model", str(image_only_model), "--n-best", "2", "--beams", "2", "--mpp", "2.0",
                      "--tile-size", "64", "--device", "cpu"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln[:2] in ("1.", "2.")]
    assert len(lines) == 2 and all("(score" in ln for ln in lines)
