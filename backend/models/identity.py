"""Model identity: which weights a loaded model has, as the string caches and indexes key by.

``ClipModel.model_id`` is this identity. It names the weights, not the name a model was
asked for, so two names of the same weights share embedding caches and cohort indexes, and
new weights under an old name never mix with what the old ones made:

- hub models: ``hf-hub:<org>/<repo>@<commit>``, the hub commit whose snapshot the weights were
  read from (the snapshot folder of the Hugging Face cache). ``quiltnet-b32`` and
  ``hf-hub:wisdomik/QuiltNet-B-32`` read from one snapshot have one id; after ``refs/main``
  moves to another commit, the id changes. The commit covers every file of the repository
  that shapes an image embedding (weights, architecture and preprocessing config); a commit
  that changes only, say, the README gives a new id too, which costs a re-embedding, never a
  wrong answer. The id is also a model name: ``load_model`` reads exactly that snapshot.
- bundles: ``bundle:<name>@<first 12 hex of the weights' sha256>`` (see ``bundle.py``).
- ``test-tiny``: its name (built in code from a fixed seed).

A *legacy* id names a hub model by its registry name (``quiltnet-b32``) or hub id
(``hf-hub:org/repo``) alone, with no commit (files written by an earlier release carry them).
It cannot be tied to any weights: caches and indexes that carry one are refused with a message
saying how to rebuild (``legacy_ids``, ``mismatch_message``). This module imports no torch.
"""

from __future__ import annotations

import re
from pathlib import Path

from backend.models.registry import (
    HF_HUB_PREFIX,
    REGISTERED,
    REVISION_SEP,
    NameKind,
    SourceKind,
    model_name_kind,
    resolve_model,
    split_revision,
)

_COMMIT = re.compile(r"[0-9a-f]{40}")


def snapshot_revision(path: str | Path) -> str | None:
    """The commit of the hub-cache snapshot a file was read from, or None if not in one.

    huggingface_hub keeps every revision's files under ``models--org--repo/snapshots/<commit>/``
    (the folder name is always the full commit hash, whatever branch or tag was asked for).
    """
    parts = Path(path).parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            return parts[i + 1]
    return None


def hub_model_id(hub_id: str, revision: str) -> str:
    """``hf-hub:org/repo@<commit>``: the identity of a hub model read from that snapshot."""
    return f"{hub_id}{REVISION_SEP}{revision}"


def recordable_model_name(name: str) -> str:
    """What an index records as the name its model loads by: a bundle folder as an absolute
    path (a search may run from another directory), registry names and hub ids as given."""
    if model_name_kind(name) is NameKind.BUNDLE:
        return str(Path(name.strip()).expanduser().resolve())
    return name


def legacy_ids(model_id: str) -> tuple[str, ...]:
    """The ids older versions used for the hub model ``model_id`` (``hf-hub:org/repo@rev``).

    Those keyed a hub model by its registry name, or by its ``hf-hub:`` id when unregistered.
    Returns ``()`` for ids that are not revision-pinned hub ids.
    """
    base, rev = split_revision(model_id)
    if rev is None or not base.startswith(HF_HUB_PREFIX):
        return ()
    try:
        entry = resolve_model(base)
    except Exception:  # noqa: BLE001 - a malformed id simply has no legacy form
        return ()
    return (entry.name,) if entry.name != base else (base,)


def is_legacy(model_id: str) -> bool:
    """True for a hub model id without a revision, as versions before weights identities wrote."""
    text = str(model_id).strip()
    if not text or REVISION_SEP in text:
        return False
    if text.startswith(HF_HUB_PREFIX):
        return True
    entry = REGISTERED.get(text.lower())
    return entry is not None and entry.source_kind is SourceKind.HUB


def describe(model_id: str) -> str:
    """A readable form: ``'quiltnet-b32 at hub commit 0123456789ab (hf-hub:...@0123...)'``."""
    base, rev = split_revision(str(model_id))
    if rev is None:
        if is_legacy(model_id):
            return f"{model_id!r} (weights not recorded: made before napari-histoclip recorded them)"
        return repr(str(model_id))
    try:
        name = resolve_model(base).name
    except Exception:  # noqa: BLE001 - describing must not fail
        name = base
    if rev.startswith("sha256:"):
        return f"{name} with local weights {rev} ({model_id})"
    short = rev[:12] if _COMMIT.fullmatch(rev) else rev
    return f"{name} at hub commit {short} ({model_id})"


def same_model_other_weights(recorded: str, given: str) -> bool:
    """Whether two ids name one hub repository at different revisions (or a legacy id of it)."""
    def repo(model_id: str) -> str | None:
        base, _ = split_revision(model_id)
        try:
            entry = resolve_model(base)
        except Exception:  # noqa: BLE001
            return None
        return entry.source.lower() if entry.source_kind is SourceKind.HUB else None

    a, b = repo(str(recorded)), repo(str(given))
    return a is not None and a == b and recorded != given


def mismatch_message(what: str, recorded: str, given: str, rebuild: str, *, loaded_by: str | None = None) -> str:
    """The one message for ``what`` (made with the weights ``recorded``) met with the weights ``given``.

    Names both models (:func:`describe`), says why they are not mixed (other weights under one
    hub name, a legacy id that recorded no weights) and ends with ``rebuild``: what to do (a
    command or an action). ``loaded_by`` names what holds ``given`` (default "the model given").
    """
    recorded, given = str(recorded), str(given)
    subject = loaded_by or "the model given"
    text = f"{what} was made with model {describe(recorded)}, but {subject} is {describe(given)}"
    if is_legacy(recorded):
        return (
            f"{text}: it was made by an older napari-histoclip, which did not record which weights "
            f"that name had then, and the two cannot be proven to be the same weights, so they are not mixed. "
            f"{rebuild}"
        )
    if same_model_other_weights(recorded, given):
        return (
            f"{text}: the same model name with other weights (the hub repository moved to another commit). "
            f"{rebuild}, or load the weights it was made with: model {recorded} "
            "(read from the Hugging Face cache if that snapshot is still there)"
        )
    return f"{text}. {rebuild}"


def check_same_weights(what: str, recorded: str, given: str, rebuild: str, *, loaded_by: str | None = None) -> None:
    """The one weights-identity check: refuse ``given`` unless it is the model id ``recorded``.

    Every place that compares the model something was made with (a cohort index, a captioner,
    a classifier, cached embeddings, an embedding store, Ray workers' models) with the one
    loaded now calls this, so the refusal reads the same everywhere.

    Parameters
    ----------
    what
        What was made with ``recorded`` ("cohort index /data/idx", "captioner /b/cap").
    recorded, given
        The model ids (:attr:`backend.models.Encoder.model_id`) it records and the one at hand.
    rebuild
        What to do about it, as a sentence.
    loaded_by
        What holds ``given`` ("model 'quiltnet-b32'"); default "the model given".

    Raises
    ------
    ModelMismatchError
        ``recorded != given``, with :func:`mismatch_message`.
    """
    if str(recorded) != str(given):
        from backend.errors import ModelMismatchError

        raise ModelMismatchError(mismatch_message(what, recorded, given, rebuild, loaded_by=loaded_by))
