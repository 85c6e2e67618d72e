"""The test double's corpus captions and grounding keep the interface's shapes (no Qt)."""

from __future__ import annotations

import numpy as np

from backend import api
from tests.support.fakes import FakeBackend


def test_fake_corpus_caption_and_grounding(tmp_path, cmu_slide) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("stroma\nglands\nfat\n", encoding="utf-8")
    fake = FakeBackend()
    slide = api.SlideRef(str(cmu_slide))
    regions = (api.Region.box(0, 0, 900, 900), api.Region.box(500, 500, 900, 900))
    result = fake.corpus_caption(api.CorpusCaptionRequest(slide, regions, str(corpus), "fake-clip", n_best=2))
    assert [c.texts for c in result.captions] == [("stroma", "glands"), ("glands", "fat")]
    assert result.captions[0].sources == (("line 1",), ("line 2",))
    g = fake.ground(api.GroundingRequest(slide, regions[0], "stroma with glands", model="fake-clip", top_k=3))
    assert g.phrases == ("stroma", "glands") and g.maps.shape == (3, *g.geometry.shape)
    for m, cells in enumerate(g.top_cells):
        assert len(cells) == 3 and g.maps[m][cells[0]] == np.nanmax(g.maps[m])
    assert fake.calls == ["corpus_caption", "ground"]
