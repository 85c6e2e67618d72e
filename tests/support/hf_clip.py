"""A hand-made transformers CLIP hub repo (PLIP-shaped): the revision, CLIP's BPE tokenizer
files from the copy open_clip ships, a tiny CLIP config (test_models_hf, the classifier and
training tests build PLIP offline from these)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import hub_helpers

PLIP_REPO = "vinid/plip"
REV = "89abcdef0123456789abcdef0123456789abcdef"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"


def make_hub_repo(hub: Path, repo: str, files: dict[str, bytes]) -> Path:
    return hub_helpers.make_hub_repo(hub, repo, files, REV)


def clip_tokenizer_files() -> dict[str, bytes]:
    """vocab.json / merges.txt of CLIP's BPE, from the copy open_clip ships (49,408 tokens)."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    rename = {"<start_of_text>": SOT, "<end_of_text>": EOT}
    vocab = {rename.get(tok, tok): idx for tok, idx in bpe.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": SOT,
        "eos_token": EOT,
        "unk_token": EOT,
        "pad_token": EOT,
        "do_lower_case": True,
    }
    return {
        "vocab.json": json.dumps(vocab).encode(),
        "merges.txt": ("#version: 0.2\n" + "\n".join(merges) + "\n").encode(),
        "tokenizer_config.json": json.dumps(config).encode(),
    }


def tiny_clip_config() -> dict:
    return {
        "projection_dim": 16,
        "text_config": {
            "vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 77,
            "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
        },
        "vision_config": {
            "image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2,
        },
    }
