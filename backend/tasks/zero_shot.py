"""Zero-shot class maps over a slide's cached tile embeddings.

As in CLIP and QuiltNet zero-shot classification: each class is described by several prompts
(its name and synonyms, each put into several templates); their normalised text features are
averaged and renormalised into one class vector. A tile's class probabilities are the softmax
of ``logit_scale * cos(tile, class)``. Only the text side ever touches the model, and text
features are cached per (model, prompt) in a :class:`TextFeatureCache` the caller holds, so
relabelling a slide with new prompts reads no pixels and costs one matrix product.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.embed.types import SlideEmbeddings
from backend.errors import InputError, ModelMismatchError
from backend.palette import class_rgb, to_rgb
from backend.tasks.class_map import ClassMap, build_class_map

if TYPE_CHECKING:
    from backend.models.encoder import Encoder

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a histopathology image of {}.",
    "an H&E image of {}.",
    "an H&E stained image of {}.",
    "a histology slide showing {}.",
    "a photomicrograph of {}.",
    "a microscopic image of {} tissue.",
    "a whole slide image tile of {}.",
    "{}.",
)

_TEXT_BATCH = 256


class TextFeatureCache:
    """Normalised text features per (model id, prompt); hold one per session.

    Parameters
    ----------
    max_entries : int
        Least recently used prompts are dropped beyond this many.
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = int(max_entries)
        self._features: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.encoded = 0  # prompts sent to a model so far (tests and logs check reuse)

    def __len__(self) -> int:
        return len(self._features)

    def encode(self, model: Encoder, prompts: Sequence[str]) -> np.ndarray:
        """(len(prompts), D) float32 L2-normalised text features, encoding only new prompts."""
        prompts = list(prompts)
        mid = str(model.model_id)
        with self._lock:
            missing = list(dict.fromkeys(p for p in prompts if (mid, p) not in self._features))
        if missing:
            # In chunks: a long prompt list must not become one huge text batch.
            feats = np.concatenate(
                [_to_numpy(model.encode_text(missing[i : i + _TEXT_BATCH])) for i in range(0, len(missing), _TEXT_BATCH)]
            )
            feats = _normalise(feats)
            with self._lock:
                self.encoded += len(missing)
                for p, f in zip(missing, feats, strict=True):
                    self._features[(mid, p)] = f
        with self._lock:
            out = []
            for p in prompts:
                self._features.move_to_end((mid, p))
                out.append(self._features[(mid, p)])
            while len(self._features) > self.max_entries:
                self._features.popitem(last=False)
        return np.stack(out).astype(np.float32, copy=False) if out else np.zeros((0, 0), np.float32)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class ClassPrompt:
    """One class: its display ``name``, extra phrasings (``synonyms``) and an RGB colour."""

    name: str
    synonyms: tuple[str, ...] = ()
    color: tuple[int, int, int] | None = None

    @property
    def phrases(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)


ClassesArg = Sequence[str | ClassPrompt] | Mapping[str, Sequence[str]]


def parse_classes(
    classes: ClassesArg,
    synonyms: Sequence[Sequence[str]] | None = None,
    colors: Sequence[str | Sequence[int]] | None = None,
) -> tuple[ClassPrompt, ...]:
    """Normalise the ways classes may be given into :class:`ClassPrompt` s.

    ``classes`` is a list of names or ClassPrompts, or a mapping name -> synonyms;
    ``synonyms``, if given, holds extra phrasings per class in the same order, and ``colors``
    one colour per class (``#rrggbb`` or RGB; none given: the palette's).
    """
    if isinstance(classes, Mapping):
        out = [ClassPrompt(str(k), tuple(str(s) for s in v)) for k, v in classes.items()]
    else:
        out = [c if isinstance(c, ClassPrompt) else ClassPrompt(str(c)) for c in classes]
    if synonyms:
        if len(synonyms) != len(out):
            raise InputError(f"synonyms: {len(synonyms)} lists given for {len(out)} classes")
        out = [
            ClassPrompt(c.name, (*c.synonyms, *(str(s) for s in syn)), c.color)
            for c, syn in zip(out, synonyms, strict=True)
        ]
    if colors:
        if len(colors) != len(out):
            raise InputError(f"colors: {len(colors)} colours given for {len(out)} classes")
        out = [ClassPrompt(c.name, c.synonyms, to_rgb(rgb)) for c, rgb in zip(out, colors, strict=True)]
    check_labels([c.name for c in out])
    return tuple(out)


def class_key(name: str) -> str:
    """A class name as compared for duplicates: case and runs of spaces do not count."""
    return " ".join(str(name).split()).casefold()


def check_labels(labels: Sequence[str]) -> None:
    """At least two class names, none empty, no two the same class (see :func:`class_key`)."""
    names = [str(n) for n in labels]
    if len(names) < 2:
        raise InputError(f"classes: zero-shot needs at least 2 classes, got {len(names)} ({names})")
    empty = [i + 1 for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise InputError(f"classes: class {empty[0]} of {names} has an empty name")
    seen: dict[str, str] = {}
    for n in names:
        key = class_key(n)
        if key in seen:  # by key, not identity: two equal literals may be one object
            raise InputError(
                f"classes: duplicate class: {seen[key]!r} and {n!r} are the same class (names are "
                "compared ignoring case and spaces); give each class once, with its other phrasings as synonyms"
            )
        seen[key] = n


def check_template(template: str) -> str:
    """One prompt template: exactly one ``{}`` (where the class name goes) and no other
    format field; a literal brace is written ``{{`` or ``}}``."""
    import string

    t = str(template)
    where = f"template {t!r}"
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(t) if name is not None]
    except ValueError as e:
        raise InputError(f"{where}: {e}; write {{}} where the class name goes and {{{{ or }}}} for a literal brace") from e
    if any(any(f) for f in fields):
        n, spec, conv = next(f for f in fields if any(f))
        field = "{" + n + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        raise InputError(
            f"{where}: {field} is not allowed; write just {{}} where the class name "
            "goes (nothing inside the braces), and {{ or }} for a literal brace"
        )
    if not fields:
        raise InputError(f"{where}: has no {{}} where the class name goes (e.g. 'an H&E image of {{}}.')")
    if len(fields) != 1:
        raise InputError(
            f"{where}: has {len(fields)} {{}} where it needs exactly one, where the class name goes "
            "(e.g. 'an H&E image of {}.')"
        )
    return t


def check_templates(templates: Sequence[str] | None) -> tuple[str, ...]:
    """The templates to use: ``DEFAULT_TEMPLATES`` when none given; each checked by
    :func:`check_template`."""
    if not templates:
        return DEFAULT_TEMPLATES
    return tuple(check_template(t) for t in templates)


def check_prompts(
    labels: Sequence[str],
    synonyms: Sequence[Sequence[str]] | None = None,
    templates: Sequence[str] | None = None,
) -> tuple[str, ...]:
    """Check a zero-shot prompt set before any work is done; return the templates to use.

    The one validator of class prompts: the backend's :func:`zero_shot` and the napari dock
    both call it, so a prompt set is accepted or refused alike everywhere.

    Parameters
    ----------
    labels
        Class names, at least two; duplicates are found ignoring case and spaces
        ("Tumor " and "tumor" are one class).
    synonyms
        Extra phrasings per class, in class order (empty or None: none).
    templates
        Prompt templates, each with exactly one ``{}`` and no other format field
        (empty or None: :data:`DEFAULT_TEMPLATES`).

    Raises
    ------
    InputError
        Naming the bad class, synonym list or template and what is wrong with it.
    """
    from backend.bounds import check_class_count, check_prompt_count

    check_class_count(len(labels), where="classes")  # before any text is encoded
    check_labels(labels)
    if synonyms:
        if len(synonyms) != len(labels):
            raise InputError(f"synonyms: {len(synonyms)} lists given for {len(labels)} classes")
        for label, syn in zip(labels, synonyms, strict=True):
            if isinstance(syn, str):
                raise InputError(f"synonyms of {label!r}: give a list of phrasings, not the string {syn!r}")
    phrasings = len(labels) + sum(len(s) for s in synonyms or ())
    check_prompt_count(phrasings * len(templates or DEFAULT_TEMPLATES), where="classes")
    return check_templates(templates)


def class_text_features(
    model: Encoder,
    classes: Sequence[ClassPrompt],
    templates: Sequence[str],
    text_cache: TextFeatureCache | None = None,
) -> np.ndarray:
    """(C, D) class vectors: the renormalised mean of every phrase x template's features."""
    cache = text_cache if text_cache is not None else TextFeatureCache()
    per_class = [[t.format(p) for p in c.phrases for t in templates] for c in classes]
    flat = [p for ps in per_class for p in ps]
    feats = cache.encode(model, flat)
    out, start = [], 0
    for ps in per_class:
        out.append(feats[start : start + len(ps)].mean(axis=0))
        start += len(ps)
    return _normalise(np.stack(out))


def prompt_colors(classes: Sequence[ClassPrompt]) -> tuple[tuple[int, int, int], ...]:
    """Each class's colour: the one its prompt gives, else the palette's for its position."""
    return tuple(
        to_rgb(c.color) if c.color is not None else class_rgb(i)
        for i, c in enumerate(classes)
    )


def classify(
    embeddings: SlideEmbeddings,
    text_features: np.ndarray,
    classes: Sequence[ClassPrompt],
    logit_scale: float,
    *,
    unknown_threshold: float | None = None,
    templates: tuple[str, ...] = (),
) -> ClassMap:
    """The pure-numpy half of :func:`zero_shot`: tile vectors x class vectors -> ClassMap."""
    if text_features.shape != (len(classes), embeddings.embed_dim):
        raise ModelMismatchError(
            f"class text features {text_features.shape} do not match {len(classes)} classes x "
            f"embedding dim {embeddings.embed_dim} of {embeddings.slide_name} ({embeddings.model_id})"
        )
    # (C, N) logits: build_class_map's class-major layout.
    logits = (np.float32(logit_scale) * text_features.astype(np.float32)) @ embeddings.vectors.T
    return build_class_map(logits, [c.name for c in classes], prompt_colors(classes), embeddings,
                           unknown_threshold=unknown_threshold, templates=templates)


def check_model(embeddings: SlideEmbeddings, model: Encoder) -> None:
    """Raise ModelMismatchError unless ``model`` made ``embeddings`` (the one weights-identity
    check, :func:`backend.models.identity.check_same_weights`)."""
    from backend.models.identity import check_same_weights

    check_same_weights(f"the embeddings of {embeddings.slide_name}", embeddings.model_id, str(model.model_id),
                       "Embed the slide with the model given first")


def zero_shot(
    embeddings: SlideEmbeddings,
    classes: ClassesArg,
    model: Encoder,
    *,
    synonyms: Sequence[Sequence[str]] | None = None,
    templates: Sequence[str] | None = None,
    unknown_threshold: float | None = None,
    text_cache: TextFeatureCache | None = None,
) -> ClassMap:
    """Classify every tile of ``embeddings`` against text-described classes.

    Parameters
    ----------
    embeddings : SlideEmbeddings
        Cached tile vectors; no pixel is read.
    classes : list of str or ClassPrompt, or mapping name -> synonyms
        The classes, at least two.
    model : ClipModel
        The model that made ``embeddings`` (only its text encoder and logit scale are used).
    synonyms : list of list of str, optional
        Extra phrasings per class, in class order.
    templates : list of str, optional
        Prompt templates with one ``{}``; default :data:`DEFAULT_TEMPLATES`.
    unknown_threshold : float, optional
        Label a tile "unknown" when its top probability is below this.
    text_cache : TextFeatureCache, optional
        Reuse text features across calls (relabelling then costs no text encoding).

    Returns
    -------
    ClassMap
    """
    check_model(embeddings, model)
    parsed = parse_classes(classes, synonyms)
    tmpl = check_prompts([c.name for c in parsed], None, templates)
    text = class_text_features(model, parsed, tmpl, text_cache)
    return classify(
        embeddings,
        text,
        parsed,
        float(model.logit_scale),
        unknown_threshold=unknown_threshold,
        templates=tmpl,
    )
