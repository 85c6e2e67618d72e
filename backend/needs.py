"""What each task needs of a model: the one table the backend, the CLI, the server, training and
the dock consult before they load anything.

Every encoder embeds images; vision-language models (CLIP, CONCH) also embed text
(:class:`backend.models.registry.Capability`). A task that needs text (zero-shot, a text
heatmap, text search, refining from prompts, CLIP fine-tuning, passage embedding) fails on an
image-only model *before* any download or load: :func:`check_model` resolves the name to its
registry entry (a bundle's manifest, a registered entry: no weights are read) and raises
:class:`backend.errors.CapabilityError` naming the model and the models that can. Tasks over
image embeddings alone (embedding, region search, classify, refine from marks) accept every
encoder.

The dock, which sees models as :class:`backend.api.ModelInfo` (capabilities as strings), asks
:func:`why_not` for the tooltip of a control the chosen model cannot drive.

This module imports neither torch nor Qt.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from backend.errors import CapabilityError, ModelError
from backend.models.registry import Capability, ModelEntry, require_capability, resolve_model


class Task(StrEnum):
    """A task a model is asked to do; the value is how messages name it."""

    EMBED = "embedding"
    REGION_SEARCH = "region search"
    CLASSIFY = "classify"
    MARKS_REFINE = "refine from marks"
    ZERO_SHOT = "zero-shot"
    HEATMAP = "a text heatmap"
    TEXT_SEARCH = "text search"
    PROMPT_REFINE = "refine from prompts"
    CLIP_FINETUNE = "CLIP fine-tuning"
    TEXT_EMBED = "embedding text"


_TEXT = frozenset({Capability.IMAGE, Capability.TEXT})
_IMAGE = frozenset({Capability.IMAGE})

#: What each task needs: text tasks need a vision-language model, the others any encoder.
NEEDS: Mapping[Task, frozenset[Capability]] = MappingProxyType({
    Task.EMBED: _IMAGE,
    Task.REGION_SEARCH: _IMAGE,
    Task.CLASSIFY: _IMAGE,
    Task.MARKS_REFINE: _IMAGE,
    Task.ZERO_SHOT: _TEXT,
    Task.HEATMAP: _TEXT,
    Task.TEXT_SEARCH: _TEXT,
    Task.PROMPT_REFINE: _TEXT,
    Task.CLIP_FINETUNE: _TEXT,
    Task.TEXT_EMBED: _TEXT,
})


def needs_text(task: Task) -> bool:
    """Whether ``task`` needs a model that embeds text."""
    return Capability.TEXT in NEEDS[Task(task)]


def check_model(model: str | os.PathLike[str] | ModelEntry, task: Task) -> ModelEntry:
    """The registry entry of ``model``, checked to be able to do ``task``; nothing is loaded.

    Parameters
    ----------
    model
        A registered name, ``hf-hub:`` id, bundle path or an entry.
    task
        What the model is about to be asked.

    Returns
    -------
    ModelEntry

    Raises
    ------
    CapabilityError
        The model lacks what ``task`` needs (an image-only model asked for text); the message
        names the model, the task and the vision-language models that can.
    UnknownModelError
        ``model`` is none of the accepted forms.
    """
    entry = model if isinstance(model, ModelEntry) else resolve_model(model if isinstance(model, str) else Path(model))
    for capability in sorted(NEEDS[Task(task)]):
        require_capability(entry, capability, Task(task).value)
    return entry


def check_before_load(model: str, task: Task) -> None:
    """:func:`check_model` for a model about to be loaded: refuse ``task`` for a model that cannot
    do it; a name that does not resolve is left to the load, whose error says why in context."""
    try:
        check_model(model, task)
    except CapabilityError:
        raise
    except ModelError:
        pass


def model_capabilities(model: str | os.PathLike[str]) -> tuple[str, ...]:
    """What ``model`` embeds, as :class:`backend.api.ModelInfo` lists it (``("image",)`` or
    ``("image", "text")``); ``()`` for a name or folder that is not a model (a captioner, a
    classifier bundle, a typo). Reads at most a bundle's manifest."""
    try:
        entry = resolve_model(model if isinstance(model, str) else Path(model))
    except ModelError:
        return ()
    return tuple(sorted(c.value for c in entry.capabilities))


def why_not(task: Task, model: str, capabilities: Iterable[str]) -> str | None:
    """Why ``model`` (of ``capabilities``, as :class:`backend.api.ModelInfo` lists them) cannot
    do ``task``, as a tooltip; ``None`` when it can."""
    have = {str(c) for c in capabilities}
    missing = sorted(c.value for c in NEEDS[Task(task)] if c.value not in have)
    if not missing:
        return None
    if missing == [Capability.TEXT.value]:
        return (f"{model} embeds images only: {Task(task).value} needs a vision-language model "
                "(one that also embeds text); choose one in Model")
    return f"{model} cannot do {Task(task).value}: it lacks {', '.join(missing)}"


__all__ = ["NEEDS", "Task", "check_before_load", "check_model", "model_capabilities", "needs_text", "why_not"]
