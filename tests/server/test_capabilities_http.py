"""Capabilities over HTTP: ``/v1/capabilities`` lists what each model embeds (registered models
and the server's model bundles), and an image-only model asked for a text task gets a 4xx whose
message names the model and the vision-language models; the client raises it as the backend's
``CapabilityError``. Image tasks (embedding, a region query's pixels) accept it."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from backend import api
from backend.errors import CapabilityError
from backend.remote import HttpBackend
from tests.support.server import TILES, running_server

SLIDE = "CMU-1-Small-Region.svs"


def test_an_image_only_model_over_http(tmp_path: Path, slides_dir: Path, image_only_model: Path) -> None:
    models = tmp_path / "server" / "models"
    models.mkdir(parents=True)
    shutil.copytree(image_only_model, models / "tiny-vision")
    with running_server(tmp_path / "server", (slides_dir,)) as running, \
            HttpBackend(running.url, running.token) as remote:
        caps = remote.capabilities()
        registered = {m["name"]: m["capabilities"] for m in caps["models"]}
        assert registered["quiltnet-b32"] == ["image", "text"]
        bundles = {b["name"]: b["capabilities"] for b in caps["bundles"]}
        assert bundles["tiny-vision"] == ["image"]

        slide = api.SlideRef(SLIDE)
        with pytest.raises(CapabilityError, match="'tiny-vision' embeds images only: zero-shot needs"):
            remote.zero_shot(api.ZeroShotRequest(slide, "tiny-vision", ("tumor", "stroma"), tiles=TILES))
        with pytest.raises(CapabilityError, match="embedding text needs a vision-language model"):
            remote.encode_texts("tiny-vision", ["tumor"])
        raw = httpx.post(f"{running.url}/v1/calls/heatmap", headers=running.headers(),
                         json={"slide": {"path": SLIDE}, "model": "tiny-vision", "query": "tumor",
                               "tiles": {"tile_size": 64, "mpp": 2.0}})
        assert raw.status_code == 422, raw.text
        body = raw.json()["error"]
        assert body["type"] == "CapabilityError" and "quiltnet-b32" in body["message"]

        # what needs images only runs
        done = remote.embed_slide(slide, "tiny-vision", TILES)
        assert done.n_tiles > 0 and done.model_id.startswith("bundle:tiny-vision@")
