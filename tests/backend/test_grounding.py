"""Caption grounding: tile-text similarity on planted real textures with a model fine-tuned here,
ClipCap leave-one-tile-out against a brute-force re-scoring, noun phrases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.errors import InputError
from backend.tasks.grounding import ground_by_similarity, top_indices
from backend.text.phrases import noun_phrases
from tests.support.planted_textures import CLASSES, planted_tiles, write_tiles


def test_noun_phrases_with_spans() -> None:
    caption = "Nests of atypical cells with prominent nucleoli in a desmoplastic stroma, and some necrosis."
    phrases = noun_phrases(caption)
    assert [p.text for p in phrases] == ["Nests of atypical cells", "prominent nucleoli", "desmoplastic stroma", "necrosis"]
    assert all(caption[p.start : p.end] == p.text for p in phrases)
    assert noun_phrases("with and of the") == []


def test_top_indices_best_first_ties_by_index() -> None:
    assert top_indices(np.array([0.1, 0.5, 0.5, 0.9]), 3).tolist() == [3, 1, 2]


@pytest.fixture(scope="module")
def planted_region(testdata: Path, tmp_path_factory: pytest.TempPathFactory):
    """(model fine-tuned on the planted slide's textures, its tile embeddings, per-tile class)."""
    import torch

    from backend.api import SlideRef, TileOptions
    from backend.local import LocalBackend

    tiles, truth = planted_tiles(testdata, grid=(6, 6), block=3)  # four 3 x 3 blocks: classes 0..3
    path = write_tiles(tmp_path_factory.mktemp("planted-ground") / "planted.tif", tiles)
    backend = LocalBackend(cache_dir=tmp_path_factory.mktemp("ground-cache"), device="cpu")
    emb = backend.embeddings(SlideRef(str(path)), "test-tiny", TileOptions())
    clip = backend.model("test-tiny")
    y = truth[emb.grid_index[:, 0], emb.grid_index[:, 1]]
    # Fine-tune the text tower's projection (locked-image tuning: the image tower and the text
    # trunk stay as they are, so the fit takes milliseconds on a loaded CPU) so that each class
    # name's text embedding lands on its texture's tiles, both ways (tile -> name, name -> tiles).
    images = torch.as_tensor(np.array(emb.vectors))
    names = list(CLASSES[:4])
    tokens = clip.tokenize(names)
    pooled = []
    hook = clip.module.ln_final.register_forward_hook(lambda m, i, out: pooled.append(out))
    with torch.no_grad():
        clip.module.encode_text(tokens)
    hook.remove()
    h = pooled[0][torch.arange(len(names)), tokens.argmax(-1)]  # open_clip's pooling: the EOT token
    projection = clip.module.text_projection.detach().clone().requires_grad_(True)
    target = torch.as_tensor(y)
    member = torch.nn.functional.one_hot(target, len(names)).float().T
    opt = torch.optim.Adam([projection], lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        logits = 30.0 * images @ torch.nn.functional.normalize(h @ projection, dim=-1).T
        to_tiles = -(logits.T.log_softmax(-1) * member / member.sum(1, keepdim=True)).sum(1).mean()
        loss = torch.nn.functional.cross_entropy(logits, target) + to_tiles
        loss.backward()
        opt.step()
    with torch.no_grad():
        clip.module.text_projection.copy_(projection)
    backend.close()
    return clip, emb, y


@pytest.mark.slow
def test_similarity_grounding_top_tiles_lie_on_the_planted_texture(planted_region) -> None:
    clip, emb, y = planted_region

    def encode(texts: list[str]) -> np.ndarray:
        return clip.encode_text(texts).numpy()

    # The three textures test-tiny tells apart. Not the dense tumour (0): at test-tiny's 32 px
    # input it has the smooth muscle's mean colour and differs only in contrast, and its tiles'
    # embeddings are closer to the muscle's (mean cosine 0.9926) than to each other (0.9917).
    # A linear probe of tumour vs the rest, cross-validated over the 36 tiles, ranks 1 of 9
    # right, so the fit below would reach 80 % on it only by memorising these tiles; a full
    # fine-tune of test-tiny on the textures (slide_level_data.fine_tune) ranks 4 of 9.
    for k, name in list(enumerate(CLASSES))[1:4]:
        g = ground_by_similarity(emb.layout, emb.vectors, name, [], encode)
        top = g.top_tiles(9)[0]
        assert (y[top] == k).mean() >= 0.8, (name, y[top])
    # Phrase grounding: each phrase of one caption finds its own texture.
    caption = "smooth muscle beside glands"
    phrases = [p.text for p in noun_phrases(caption)]
    assert phrases == ["smooth muscle", "glands"]
    g = ground_by_similarity(emb.layout, emb.vectors, caption, phrases, encode)
    assert g.maps.shape == (3, *emb.layout.grid_shape)
    for row, k in ((1, 1), (2, 2)):
        assert (y[g.top_tiles(9)[row]] == k).mean() >= 0.8
    cells = g.top_cells(3)
    assert len(cells) == 3 and all(len(c) == 3 for c in cells)
    assert all(np.isfinite(g.maps[1][r, c]) for r, c in cells[1])


def test_leave_one_out_ranks_tiles_as_a_brute_force_rescoring(tiny_captioner: Path) -> None:
    import torch

    from backend.caption import load_captioner
    from backend.caption.attribution import caption_token_spans, leave_one_out_support
    from backend.embed.region import pool

    captioner = load_captioner(tiny_captioner, clip_model_id="test-tiny", device="cpu")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(7, captioner.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    caption = "tumor glands in desmoplastic stroma"
    phrases = noun_phrases(caption)
    support = leave_one_out_support(captioner, vectors, caption, [(p.start, p.end) for p in phrases], batch_size=3)
    assert support.shape == (1 + len(phrases), 7)

    # Brute force: re-score the caption for each region without one tile, one at a time,
    # with the training loss (mean token cross-entropy) of the captioner's own forward.
    ids, _ = caption_token_spans(captioner.tokenizer, caption)
    input_ids = torch.tensor([ids])
    mask = torch.ones_like(input_ids)

    def log_likelihood(region: np.ndarray) -> float:
        with torch.inference_mode():
            out = captioner.model(torch.as_tensor(pool(region))[None], input_ids, mask)
        return -float(out.loss) * out.n_tokens

    full = log_likelihood(vectors)
    brute = np.array([full - log_likelihood(np.delete(vectors, i, axis=0)) for i in range(7)])
    np.testing.assert_array_equal(np.argsort(-support[0], kind="stable"), np.argsort(-brute, kind="stable"))
    np.testing.assert_allclose(support[0], brute, atol=1e-3)
    # a span over the whole caption's text counts every token but EOS; over nothing, none
    whole = leave_one_out_support(captioner, vectors, caption, [(0, len(caption)), (len(caption), len(caption))])
    assert not np.allclose(whole[1], 0) and np.allclose(whole[2], 0)


def test_grounding_errors() -> None:
    from backend.tasks.grounding import check_caption

    with pytest.raises(InputError, match="grounding caption: empty text"):
        check_caption("  ")


@pytest.mark.slow
def test_local_backend_grounding_both_methods(tmp_path: Path, cmu_slide: Path, tiny_captioner: Path) -> None:
    from backend import api
    from backend.local import LocalBackend

    tiles = api.TileOptions(tile_size=64, mpp=2.0)
    region = api.Region.polygon([(0, 0), (2000, 300), (1200, 2900)])
    with LocalBackend(cache_dir=tmp_path / "cache", device="cpu") as backend:
        slide = api.SlideRef(str(cmu_slide))
        sim = backend.ground(api.GroundingRequest(slide, region, "dense fibrous stroma with lymphocytes",
                                                  model="test-tiny", tiles=tiles, top_k=4))
        assert sim.method == "similarity" and sim.phrases == ("dense fibrous stroma", "lymphocytes")
        assert sim.maps.shape[0] == 3 and sim.maps.shape[1:] == sim.geometry.shape
        inside = np.isfinite(sim.maps[0])
        assert 4 <= inside.sum() < inside.size  # the region's tiles only
        best = sim.top_cells[0][0]
        assert sim.maps[0][best] == np.nanmax(sim.maps[0])
        loo = backend.ground(api.GroundingRequest(slide, region, "tumor glands in desmoplastic stroma",
                                                  captioner=str(tiny_captioner), tiles=tiles))
        assert loo.method == "leave-one-out" and loo.phrases == ("tumor glands", "desmoplastic stroma")
        np.testing.assert_array_equal(np.isfinite(loo.maps[0]), inside)
        with pytest.raises(InputError, match="give the vision-language model"):
            backend.ground(api.GroundingRequest(slide, region, "x", tiles=tiles))
