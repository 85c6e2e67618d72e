"""Classifier heads over a CLIP model's L2-normalised image embeddings.

Two kinds, both with ``.n_classes``, ``.class_names``, ``.colors``, ``.embed_dim`` and
``.logits(x)`` (x: (N, D) float32 unit-norm embeddings, as the embedding cache stores them):

- :class:`LinearHead`: ``logits = weight @ x + bias`` (few-shot refine heads, the zero-shot
  text head, CLIP-IT students without fusion);
- :class:`FusionHead`: CLIP-IT's late fusion. ``p = normalise(proj(x))`` is the image's
  "pseudo-text" in the text space, classified by a text-space MLP (ReLU between layers, none
  after the last); ``logits = (1 - alpha) (W x + b) + alpha MLP(p)``.

Heads are numpy only (no torch): applying one to 100,000 cached tiles is a few matmuls.
:func:`head_tensors` / :func:`head_from_tensors` are their safetensors form in a classifier
bundle (``backend.models.classifier``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from backend.errors import InputError


class HeadType(StrEnum):
    """A classifier bundle's ``head.type``."""

    LINEAR = "linear"
    LATE_FUSION = "late_fusion"


def _frozen(a: Any, name: str) -> np.ndarray:
    out = np.array(a, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(out).all():
        raise InputError(f"classifier head: {name} holds NaN or infinity")
    out.setflags(write=False)
    return out


class _Classes:
    """What every head has: class names and colours, and a vision weight (C, D)."""

    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    weight: np.ndarray

    def _names_and_colors(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "colors", tuple(tuple(int(v) for v in c) for c in self.colors))

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def embed_dim(self) -> int:
        return int(self.weight.shape[1])


@dataclass(frozen=True, eq=False)
class LinearHead(_Classes):
    """A linear classifier over L2-normalised tile embeddings: ``logits = weight @ x + bias``.

    Attributes
    ----------
    class_names : tuple of str
        The classes, in row order.
    colors : tuple of RGB
        One colour per class (the map's legend).
    weight : (C, D) float32
    bias : (C,) float32
    """

    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        w = np.ascontiguousarray(self.weight, dtype=np.float32)
        b = np.ascontiguousarray(self.bias, dtype=np.float32).reshape(-1)
        n = len(self.class_names)
        if w.ndim != 2 or len(w) != n or b.shape != (n,) or len(self.colors) != n:
            raise InputError(
                f"classifier head: {n} class names, {len(self.colors)} colours, weight {w.shape} and "
                f"bias {b.shape} do not agree (expected weight (C, D) and bias (C,) with C = {n})"
            )
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise InputError("classifier head: weight or bias holds NaN or infinity")
        w.setflags(write=False)
        b.setflags(write=False)
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)
        self._names_and_colors()

    def logits(self, x: np.ndarray) -> np.ndarray:
        """``x @ weight.T + bias`` for unit-norm embeddings ``x`` (N, D): (N, C) float32."""
        out = np.asarray(x, dtype=np.float32) @ self.weight.T
        out += self.bias
        return out

    def extended(self, new_names: Sequence[str]) -> LinearHead:
        """This head with classes ``new_names`` appended, each starting as the mean of the rows,
        coloured by :func:`backend.palette.new_class_rgb`."""
        from backend.palette import new_class_rgb

        new = [n for n in new_names if n not in self.class_names]
        if not new:
            return self
        # a head without classes (refine from marks alone) has no mean row: new classes start at 0
        start = self.weight.mean(axis=0, keepdims=True) if self.n_classes else np.zeros((1, self.embed_dim), np.float32)
        w = np.concatenate([self.weight, np.repeat(start, len(new), axis=0)])
        b = np.concatenate([self.bias, np.full(len(new), self.bias.mean() if self.n_classes else 0.0, np.float32)])
        colors = list(self.colors)
        for _ in new:  # the dock's "Add class" colours a new class by the same rule
            colors.append(new_class_rgb(colors))
        return LinearHead((*self.class_names, *new), tuple(colors), w, b)


@dataclass(frozen=True, eq=False)
class FusionHead(_Classes):
    """CLIP-IT's late-fusion head: vision logits blended with a text-space MLP's.

    Attributes
    ----------
    class_names, colors
        As :class:`LinearHead`'s.
    weight : (C, D), bias : (C,)
        The vision head.
    proj_weight : (T, D), proj_bias : (T,)
        The projection of the image embedding into the text space (normalised after it).
    text_layers : tuple of (weight (H_out, H_in), bias (H_out,))
        The text-space MLP, first layer ``H_in = T``, last ``H_out = C``; ReLU between layers.
    alpha : float in [0, 1]
        The weight of the text-space logits.
    """

    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    weight: np.ndarray
    bias: np.ndarray
    proj_weight: np.ndarray
    proj_bias: np.ndarray
    text_layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    alpha: float

    def __post_init__(self) -> None:
        n = len(self.class_names)
        w, b = _frozen(self.weight, "weight"), _frozen(self.bias, "bias").reshape(-1)
        pw, pb = _frozen(self.proj_weight, "proj.weight"), _frozen(self.proj_bias, "proj.bias").reshape(-1)
        if w.ndim != 2 or len(w) != n or b.shape != (n,) or len(self.colors) != n:
            raise InputError(
                f"late-fusion head: {n} class names, {len(self.colors)} colours, weight {w.shape} and bias "
                f"{b.shape} do not agree (expected weight (C, D) and bias (C,) with C = {n})"
            )
        if pw.ndim != 2 or pw.shape[1] != w.shape[1] or pb.shape != (len(pw),):
            raise InputError(f"late-fusion head: proj.weight {pw.shape} and proj.bias {pb.shape} must be "
                             f"(T, D) and (T,) with D = {w.shape[1]} (the vision head's)")
        if not self.text_layers:
            raise InputError("late-fusion head: the text-space MLP has no layer (need at least one)")
        layers, width = [], len(pw)
        for i, (lw, lb) in enumerate(self.text_layers):
            lw, lb = _frozen(lw, f"text.{i}.weight"), _frozen(lb, f"text.{i}.bias").reshape(-1)
            if lw.ndim != 2 or lw.shape[1] != width or lb.shape != (len(lw),):
                raise InputError(f"late-fusion head: text.{i}.weight {lw.shape} / bias {lb.shape} do not "
                                 f"follow a layer of width {width} (expected ({len(lw)}, {width}) and ({len(lw)},))")
            layers.append((lw, lb))
            width = len(lw)
        if width != n:
            raise InputError(f"late-fusion head: the text-space MLP ends in {width} outputs, not the {n} classes")
        alpha = float(self.alpha)
        if not 0.0 <= alpha <= 1.0:
            raise InputError(f"late-fusion head: alpha must be within [0, 1], got {self.alpha}")
        for name, value in (("weight", w), ("bias", b), ("proj_weight", pw), ("proj_bias", pb),
                            ("text_layers", tuple(layers)), ("alpha", alpha)):
            object.__setattr__(self, name, value)
        self._names_and_colors()

    @property
    def text_dim(self) -> int:
        return int(self.proj_weight.shape[0])

    def logits(self, x: np.ndarray) -> np.ndarray:
        """``(1 - alpha) (W x + b) + alpha MLP(normalise(proj x))`` for ``x`` (N, D): (N, C) float32."""
        x = np.asarray(x, dtype=np.float32)
        p = x @ self.proj_weight.T
        p += self.proj_bias
        p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), np.float32(1e-12))
        h = p
        last = len(self.text_layers) - 1
        for i, (lw, lb) in enumerate(self.text_layers):
            h = h @ lw.T
            h += lb
            if i < last:
                np.maximum(h, 0, out=h)
        out = x @ self.weight.T
        out += self.bias
        out *= np.float32(1.0 - self.alpha)
        out += np.float32(self.alpha) * h
        return out


Head = LinearHead | FusionHead


def head_tensors(head: Head) -> dict[str, np.ndarray]:
    """The head's tensors under their names in ``head.safetensors``."""
    out = {"weight": head.weight, "bias": head.bias}
    if isinstance(head, FusionHead):
        out.update({"proj.weight": head.proj_weight, "proj.bias": head.proj_bias})
        for i, (lw, lb) in enumerate(head.text_layers):
            out[f"text.{i}.weight"], out[f"text.{i}.bias"] = lw, lb
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def head_manifest(head: Head) -> dict[str, Any]:
    """The manifest's ``head`` entry for ``head``."""
    if isinstance(head, FusionHead):
        return {"type": HeadType.LATE_FUSION.value, "n_classes": head.n_classes, "embed_dim": head.embed_dim,
                "text_dim": head.text_dim, "text_layers": len(head.text_layers), "alpha": head.alpha}
    if isinstance(head, LinearHead):
        return {"type": HeadType.LINEAR.value, "n_classes": head.n_classes, "embed_dim": head.embed_dim}
    raise InputError(f"classifier head: a {type(head).__name__} is not a LinearHead or a FusionHead")


def head_from_tensors(spec: Mapping[str, Any], tensors: Mapping[str, np.ndarray], class_names: Sequence[str],
                      colors: Sequence[tuple[int, int, int]]) -> Head:
    """The head a manifest's ``head`` entry ``spec`` and the tensors of ``head.safetensors`` make.

    Raises
    ------
    KeyError
        A tensor the head type needs is missing (the caller names the file).
    InputError
        Shapes that do not fit together, a bad ``alpha`` or ``text_layers``.
    """
    names, cols = tuple(class_names), tuple(colors)
    kind = HeadType(spec["type"])
    if kind is HeadType.LINEAR:
        return LinearHead(names, cols, tensors["weight"], tensors["bias"])
    n_layers = spec.get("text_layers")
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1:
        raise InputError(f"late-fusion head: text_layers must be a whole number >= 1, got {n_layers!r}")
    alpha = spec.get("alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise InputError(f"late-fusion head: alpha must be a number in [0, 1], got {alpha!r}")
    layers = tuple((tensors[f"text.{i}.weight"], tensors[f"text.{i}.bias"]) for i in range(n_layers))
    return FusionHead(names, cols, tensors["weight"], tensors["bias"], tensors["proj.weight"], tensors["proj.bias"],
                      layers, float(alpha))


__all__ = ["FusionHead", "Head", "HeadType", "LinearHead", "head_from_tensors", "head_manifest", "head_tensors"]
