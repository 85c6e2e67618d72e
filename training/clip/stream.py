"""WebDataset tar shards as a CLIP training stream: read in parallel, duplicate-free, resumable.

Each process (DDP rank) reads its own shards in ``streams`` DataLoader workers, one logical
stream per worker:

- Shards (only those holding samples) are permuted by (seed, epoch) and dealt to the
  ``world x streams`` slots, each to the slot with the fewest samples so far, so that every
  stream of every rank runs out at nearly the same time. Ranks never share a shard.
- A stream reads its shards in order (no shuffling across shards) and groups samples into full
  batches with :func:`~training.clip.sampler.stream_unique_batches` (no image or caption twice
  in a batch; an image's identity is its ``group`` text if the sample has one, else its bytes'
  hash), before anything is decoded. Then a batch is decoded, checked, augmented (seeded by
  sample key) and preprocessed in the worker.
- The trainer takes batches in strict round robin over the streams: batch j of an epoch is
  batch j // streams of stream j % streams. The epoch of a rank ends at the first turn whose
  stream is spent (at most about one shard per stream is left over, a new part each epoch),
  and under DDP when any rank's ends (:func:`next_group` agrees over ranks), so all ranks take
  the same number of steps.

So the position in an epoch is one number, the batches taken so far (``TrainState.batch_in_epoch``):
on resume each stream skips its share of them (without decoding) and the workers are rotated
so that the DataLoader's own round robin continues where the interrupted run stopped.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.errors import InputError
from backend.models.registry import Preprocessing
from training.clip.augment import AugmentConfig, augment
from training.clip.sampler import stream_unique_batches

IMAGE_EXTS = ("jpg", "jpeg", "png", "tif", "tiff", "webp")
CAPTION_EXTS = ("txt", "caption", "text")
GROUP_EXT = "group"  # optional: the image's identity (several captions of one image)
_WAITING = 4  # batches' worth of samples that may wait for a duplicate-free batch


def is_stream(spec: str) -> bool:
    """A WebDataset shard spec (``.tar`` files, brace ranges allowed) rather than a table or folder."""
    return ".tar" in spec and not Path(spec).is_dir()


def expand_shards(spec: str) -> list[str]:
    """``data/{000..009}.tar`` (brace ranges) or ``a.tar::b.tar`` -> shard paths, each checked."""
    import braceexpand

    shards = [s for part in spec.split("::") for s in braceexpand.braceexpand(part)]
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise InputError(f"webdataset {spec}: shard {missing[0]} not found ({len(missing)} of {len(shards)} missing)")
    return shards


def shard_sizes(shards: Sequence[str]) -> list[int]:
    """Samples per tar shard (distinct keys with an image), read from the tar headers only."""
    sizes = []
    for s in shards:
        try:
            with tarfile.open(s) as tar:
                keys = {m.name.rpartition(".")[0] for m in tar if m.name.rpartition(".")[2].lower() in IMAGE_EXTS}
        except (tarfile.TarError, OSError) as e:
            raise InputError(f"webdataset shard {s}: not a readable tar file ({e})") from e
        sizes.append(len(keys))
    return sizes


def assign_shards(sizes: Sequence[int], slots: int, *, seed: int, epoch: int) -> list[list[int]]:
    """Shard indices per slot (slot = rank * streams + stream), balanced by sample count."""
    order = [int(i) for i in np.random.default_rng([seed, epoch]).permutation(len(sizes)) if sizes[i] > 0]
    out: list[list[int]] = [[] for _ in range(slots)]
    load = [0] * slots
    for i in order:  # each shard to the lightest slot (then the one with fewest shards, then the first)
        slot = min(range(slots), key=lambda k: (load[k], len(out[k]), k))
        out[slot].append(i)
        load[slot] += sizes[i]
    return out


def stream_count(sizes: Sequence[int], world: int, workers: int, spec: str) -> int:
    """Logical streams per rank: ``workers`` (at least 1), at most the shards each rank gets."""
    usable = sum(1 for n in sizes if n > 0)
    if usable < world:
        raise InputError(f"webdataset {spec}: {usable} shard(s) with samples for {world} processes; every process "
                         "reads shards of its own: write at least as many shards as processes")
    return max(1, min(workers, usable // world))


def skipped(position: int, stream: int, streams: int) -> int:
    """Batches stream ``stream`` gave in the first ``position`` batches of strict round robin."""
    return max(0, -(-(position - stream) // streams))


@dataclass(frozen=True)
class _Raw:
    key: str
    url: str
    image: bytes
    caption: str
    identity: str


def _raw(sample: dict[str, Any]) -> _Raw:
    key, url = str(sample.get("__key__")), str(sample.get("__url__"))
    image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
    caption = next((sample[e] for e in CAPTION_EXTS if e in sample), None)
    if image is None or caption is None:
        missing = f"image ({', '.join(IMAGE_EXTS)})" if image is None else f"caption ({', '.join(CAPTION_EXTS)})"
        held = sorted(k for k in sample if not k.startswith("__"))
        raise InputError(f"webdataset shard {url}: sample {key} has no {missing}; it holds {held}")
    text = caption.decode("utf-8", errors="replace") if isinstance(caption, bytes) else str(caption)
    if not text.strip():
        raise InputError(f"webdataset shard {url}: sample {key}: empty caption")
    group = sample.get(GROUP_EXT)
    identity = group.decode() if isinstance(group, bytes) else hashlib.sha1(image).hexdigest()
    return _Raw(key, url, image, text.strip(), identity)


def _decode(raw: _Raw) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from training.clip.data import check_pixels

    try:
        with Image.open(io.BytesIO(raw.image)) as im:
            rgb = np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"webdataset shard {raw.url}: sample {raw.key}: not a readable image ({e})") from e
    return check_pixels(rgb, f"webdataset shard {raw.url}: sample {raw.key}")


def _identity(batch: Any) -> Any:  # DataLoader's collate for ready-made batches (picklable)
    return batch


class ShardStream(torch.utils.data.IterableDataset):
    """One rank's streams of one epoch (see the module docstring); items are whole batches
    ``{"pixels", "captions", "ids", "stream", "index"}``. ``position``: batches already taken."""

    def __init__(self, shards: Sequence[Sequence[str]], batch_size: int, preprocessing: Preprocessing,
                 augment_config: AugmentConfig, *, seed: int, epoch: int, position: int = 0) -> None:
        super().__init__()
        self.shards = [list(s) for s in shards]
        self.batch_size, self.preprocessing, self.augment = batch_size, preprocessing, augment_config
        self.seed, self.epoch, self.position = seed, epoch, position

    def loader(self) -> torch.utils.data.DataLoader:
        """A DataLoader with one worker per stream (none for a single stream)."""
        n = len(self.shards)
        return torch.utils.data.DataLoader(self, batch_size=None, collate_fn=_identity, num_workers=n if n > 1 else 0,
                                           prefetch_factor=2 if n > 1 else None)

    def _item(self, raw: _Raw) -> torch.Tensor:
        from training.clip.data import to_model_input

        key = int(hashlib.sha1(raw.key.encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng([self.seed, self.epoch, key])
        return to_model_input(augment(_decode(raw), self.augment, rng), self.preprocessing)

    def batches(self, stream: int) -> Iterator[dict[str, Any]]:
        """Stream ``stream``'s batches from its first not yet taken."""
        import webdataset as wds

        urls = self.shards[stream]
        if not urls:
            return
        samples = (_raw(s) for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
        skip = skipped(self.position, stream, len(self.shards))
        grouped = stream_unique_batches(samples, self.batch_size, lambda r: (r.identity, r.caption),
                                        max_waiting=_WAITING * self.batch_size)
        for index, batch in enumerate(grouped):
            if index < skip:  # taken before the interruption: grouped again, never decoded
                continue
            yield {"pixels": torch.stack([self._item(r) for r in batch]), "captions": [r.caption for r in batch],
                   "ids": [r.key for r in batch], "stream": stream, "index": index}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        n = len(self.shards)
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != (n if n > 1 else 1):
            raise InputError(f"ShardStream: {workers} loader workers for {n} streams; use ShardStream.loader()")
        if info is None and n > 1:
            raise InputError("ShardStream: several streams need one loader worker each; use ShardStream.loader()")
        # rotated so that the DataLoader's round robin (worker 0 first) continues at batch ``position``
        yield from self.batches((worker + self.position) % n)


def round_robin(loader: Any, streams: int, position: int) -> Iterator[dict[str, Any]]:
    """The loader's batches while they arrive in strict round robin from ``position`` on; ends at
    the first turn whose stream is spent (the DataLoader then moves on to the next worker)."""
    j = position
    for batch in loader:
        if (batch["stream"], batch["index"]) != (j % streams, j // streams):
            return
        yield batch
        j += 1


def next_group(batches: Iterator[dict[str, Any]], size: int, distributed: bool) -> list[dict[str, Any]] | None:
    """The next ``size`` batches, or None when this rank (or, under DDP, any rank) has fewer left."""
    group = []
    for _ in range(size):
        b = next(batches, None)
        if b is None:
            break
        group.append(b)
    full = len(group) == size
    if distributed:
        import torch.distributed as dist

        flag = torch.tensor([int(full)])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        full = bool(flag.item())
    return group if full else None


@dataclass(frozen=True)
class Stream:
    """WebDataset shards as a training source (image + caption per sample)."""

    spec: str
    shards: tuple[str, ...]
    sizes: tuple[int, ...]
    sha256: str
    captions: tuple[str, ...] = ("",)  # streams always carry captions
    targets: None = None
    classes: None = None

    source = property(lambda self: self.spec)
    samples = property(lambda self: sum(self.sizes))

    @classmethod
    def open(cls, spec: str) -> Stream:
        shards = expand_shards(spec)
        listing = "\n".join(f"{s}\0{Path(s).stat().st_size}" for s in shards)
        return cls(spec, tuple(shards), tuple(shard_sizes(shards)), hashlib.sha256(listing.encode()).hexdigest())

    def record(self) -> dict[str, Any]:
        return {"source": self.spec, "sha256": self.sha256, "rows": self.samples, "shards": len(self.shards),
                "kind": "webdataset"}

    def _deal(self, world: int, workers: int, seed: int, epoch: int) -> tuple[int, list[list[int]]]:
        """Streams per rank and ``epoch``'s shard indices per slot (slot = rank * streams + stream)."""
        n = stream_count(self.sizes, world, workers, self.spec)
        return n, assign_shards(self.sizes, world * n, seed=seed, epoch=epoch)

    def planned_batches(self, batch_size: int, *, world: int, workers: int, seed: int, epoch: int) -> int:
        """Batches each rank takes in ``epoch``: exact unless repeated images or captions leave
        a stream's samples unbatched (then an upper bound; the epoch ends sooner).

        A stream of ``c`` full batches at place ``s`` of ``n`` ends the round robin at batch
        ``c * n + s``; the epoch ends at the first stream of any rank to run out.
        """
        n, slots = self._deal(world, workers, seed, epoch)
        full = [sum(self.sizes[i] for i in slot) // batch_size for slot in slots]
        return min(full[rank * n + s] * n + s for rank in range(world) for s in range(n))

    def epoch(self, batch_size: int, preprocessing: Preprocessing, augment_config: AugmentConfig, *, rank: int,
              world: int, workers: int, seed: int, epoch: int, position: int) -> ShardStream:
        """Rank ``rank``'s streams of ``epoch``, from batch ``position`` on."""
        n, slots = self._deal(world, workers, seed, epoch)
        mine = [[self.shards[i] for i in slots[rank * n + s]] for s in range(n)]
        return ShardStream(mine, batch_size, preprocessing, augment_config, seed=seed, epoch=epoch, position=position)
