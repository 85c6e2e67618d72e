"""The pathology foundation models the registry knows, as their model cards state them.

Plain data (no torch, no timm): ``registry.py`` turns each row into a ``ModelEntry``. Every
row carries what its card says: the repository, the library that builds it (``family``), the
constructor's keyword arguments (``kwargs``; a layer class is written as its dotted import
path, e.g. ``"timm.layers.SwiGLUPacked"``, and imported when the model is built), the
embedding's pooling and dimension, the input size, mean/std and interpolation, the µm per
pixel it was trained at, the licence, whether the weights are gated, the precision the card
recommends on a GPU, and its size in GFLOPs per 224 px tile (for speed estimates).

Sources: the Hugging Face model cards, and the loaders of TRIDENT (mahmoodlab/TRIDENT,
``patch_encoder_models/load.py``) and LazySlide (``lazyslide/models/vision``), which agree
on the keyword arguments and poolings below.
"""

from __future__ import annotations

from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
SWIGLU = "timm.layers.SwiGLUPacked"
SILU = "torch.nn.SiLU"

# One dict per model. ``arch`` is the timm architecture a lone weights file is built as (a hub
# repository's own config.json names it too). GFLOPs: 2 x multiply-adds of one tile.
FOUNDATION_MODELS: tuple[dict[str, Any], ...] = (
    {
        "name": "uni",
        "repo": "MahmoodLab/UNI",
        "family": "timm",
        "arch": "vit_large_patch16_224",
        "kwargs": {"init_values": 1e-5, "dynamic_img_size": True, "num_classes": 0},
        "pooling": "head",  # timm's forward with num_classes=0: the (normed) class token
        "embed_dim": 1024,
        "preprocessing": {"image_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"},
        "native_mpp": 0.5,
        "license": "cc-by-nc-nd-4.0",
        "gated": True,
        "precision": "fp16",
        "gflops": 122.0,
        "description": "UNI: ViT-L/16 DINOv2-trained on 100M tiles of 100k H&E and IHC slides (Mass-100K).",
    },
    {
        "name": "uni2-h",
        "repo": "MahmoodLab/UNI2-h",
        "family": "timm",
        "arch": "vit_giant_patch14_224",
        "kwargs": {
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "num_classes": 0,
            "no_embed_class": True,
            "mlp_layer": SWIGLU,
            "act_layer": SILU,
            "reg_tokens": 8,
            "dynamic_img_size": True,
        },
        "pooling": "head",
        "embed_dim": 1536,
        "preprocessing": {"image_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"},
        "native_mpp": 0.5,
        "license": "cc-by-nc-nd-4.0",
        "gated": True,
        "precision": "bf16",
        "gflops": 360.0,
        "description": "UNI2-h: ViT-H/14 (SwiGLU, 8 register tokens) on 200M tiles of 350k H&E and IHC slides.",
    },
    {
        "name": "virchow2",
        "repo": "paige-ai/Virchow2",
        "family": "timm",
        "arch": "vit_huge_patch14_224",
        "kwargs": {"mlp_layer": SWIGLU, "act_layer": SILU},
        "pooling": "cls+mean",  # the card: class token ++ mean of the 256 patch tokens (after 4 registers)
        "embed_dim": 2560,
        "preprocessing": {"image_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bicubic"},
        "native_mpp": 0.5,
        "license": "cc-by-nc-nd-4.0",
        "gated": True,
        "precision": "fp16",
        "gflops": 335.0,
        "description": "Virchow2: ViT-H/14 (SwiGLU, 4 register tokens) on 3.1M slides at mixed magnifications.",
    },
    {
        "name": "h-optimus-0",
        "repo": "bioptimus/H-optimus-0",
        "family": "timm",
        "arch": "vit_giant_patch14_reg4_dinov2",
        "kwargs": {"init_values": 1e-5, "dynamic_img_size": False},
        "pooling": "head",
        "embed_dim": 1536,
        "preprocessing": {"image_size": 224, "mean": HOPTIMUS_MEAN, "std": HOPTIMUS_STD, "interpolation": "bicubic"},
        "native_mpp": 0.5,
        "license": "apache-2.0",
        "gated": True,
        "precision": "fp16",
        "gflops": 580.0,
        "description": "H-optimus-0: ViT-g/14 (4 register tokens) on 500k+ H&E slides.",
    },
    {
        "name": "h-optimus-1",
        "repo": "bioptimus/H-optimus-1",
        "family": "timm",
        "arch": "vit_giant_patch14_reg4_dinov2",
        "kwargs": {"init_values": 1e-5, "dynamic_img_size": False},
        "pooling": "head",
        "embed_dim": 1536,
        "preprocessing": {"image_size": 224, "mean": HOPTIMUS_MEAN, "std": HOPTIMUS_STD, "interpolation": "bicubic"},
        "native_mpp": 0.5,
        "license": "other (non-commercial)",
        "gated": True,
        "precision": "fp16",
        "gflops": 580.0,
        "description": "H-optimus-1: ViT-g/14 (4 register tokens) on 1M+ slides of 800k+ patients.",
    },
    {
        "name": "gigapath",
        "repo": "prov-gigapath/prov-gigapath",
        "family": "timm",
        "arch": "vit_giant_patch14_dinov2",
        "kwargs": {},
        "pooling": "head",
        "embed_dim": 1536,
        # the card: Resize(256, bicubic), CenterCrop(224), ImageNet mean/std
        "preprocessing": {
            "image_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bicubic", "crop_pct": 0.875
        },
        "native_mpp": 0.5,
        "license": "apache-2.0",
        "gated": True,
        "precision": "fp16",
        "gflops": 580.0,
        "description": "Prov-GigaPath tile encoder: ViT-g/14 DINOv2-trained on 1.3B tiles of 171k slides.",
    },
    {
        "name": "phikon-v2",
        "repo": "owkin/phikon-v2",
        "family": "hf_vision",
        "arch": None,
        "kwargs": {},
        "pooling": "cls",  # the card: last_hidden_state[:, 0, :]
        "embed_dim": 1024,
        "preprocessing": {"image_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bicubic"},
        "native_mpp": 0.5,
        "license": "other (non-commercial)",
        "gated": False,
        "precision": "fp16",
        "gflops": 122.0,
        "description": "Phikon-v2: ViT-L/16 DINOv2-trained on 460M tiles of 58k public slides (transformers).",
    },
    {
        "name": "conch",
        "repo": "MahmoodLab/CONCH",
        "family": "conch",
        "arch": "conch_ViT-B-16",
        "kwargs": {},
        "pooling": "contrast",  # encode_image(proj_contrast=True): the 512-d space shared with text
        "embed_dim": 512,
        "preprocessing": {"image_size": 448, "interpolation": "bicubic"},  # OpenAI mean/std (the package's)
        "native_mpp": 0.5,
        "license": "cc-by-nc-nd-4.0",
        "gated": True,
        "precision": "fp32",
        "gflops": 135.0,
        "description": "CONCH: CoCa ViT-B/16 (448 px) + text encoder on 1.17M pathology image-caption pairs.",
    },
    {
        "name": "dinov2-vitb14",
        "repo": "facebook/dinov2-base",
        "family": "hf_vision",
        "arch": None,
        "kwargs": {},
        "pooling": "pooler",  # Dinov2Model's pooler_output: the layer-normed class token
        "embed_dim": 768,
        # its image processor: resize the short side to 256 (bicubic), centre-crop 224
        "preprocessing": {
            "image_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bicubic", "crop_pct": 0.875
        },
        "native_mpp": 0.5,  # natural-image model: no native resolution; the project's default
        "license": "apache-2.0",
        "gated": False,
        "precision": "fp16",
        "gflops": 44.0,
        "description": "DINOv2 ViT-B/14 (natural images, LVD-142M): a general-purpose baseline, not pathology.",
    },
)
