"""Cross-client batching: single tiles or texts from many requests go through one model call.

A GPU encodes 64 tiles in about the time it takes for one, and even a CPU gains from larger
matrix products; eight clients each sending one tile should cost one batch, not eight. A
:class:`Batcher` has one thread per model and kind: it waits for a first item, gathers more
until ``max_batch`` are there or ``max_wait_ms`` has passed, runs ``fn(items)`` once and hands
each caller its row. The event loop only awaits a future; the model runs on the batcher's thread.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any


class Batcher:
    """Batches calls of ``fn(list_of_items) -> sequence of results`` across threads.

    ``max_batch=1`` turns batching off (each item is its own call), for comparison.
    """

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], *, max_batch: int = 32, max_wait_ms: float = 5.0,
                 name: str = "batcher") -> None:
        if max_batch < 1 or max_wait_ms < 0:
            from backend.errors import InputError

            raise InputError(f"batching: max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.fn, self.max_batch, self.max_wait = fn, int(max_batch), float(max_wait_ms) / 1000
        self.name = name
        self.batches = 0
        self.items = 0
        self._queue: queue.Queue[tuple[Any, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"histoclip-{name}", daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> Future:
        """A future of ``item``'s result (set when its batch has run)."""
        fut: Future = Future()
        self._queue.put((item, fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            self._call(batch)

    def _call(self, batch: list[tuple[Any, Future]]) -> None:
        live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self.fn([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"{self.name}: {len(results)} results for a batch of {len(live)}")
        except BaseException as e:  # noqa: BLE001 - every caller of the batch gets the error
            for _, fut in live:
                fut.set_exception(e)
            return
        self.batches += 1
        self.items += len(live)
        for (_, fut), result in zip(live, results):
            fut.set_result(result)


class Encoders:
    """The batchers of one backend, by (kind, model): made on first use, closed together."""

    def __init__(self, backend: Any, *, max_batch: int, max_wait_ms: float) -> None:
        self.backend, self.max_batch, self.max_wait_ms = backend, max_batch, max_wait_ms
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, model: str) -> Batcher:
        with self._lock:
            key = (kind, model)
            if key not in self._batchers:
                fn = self._texts if kind == "text" else self._images
                self._batchers[key] = Batcher(functools.partial(fn, model), max_batch=self.max_batch,
                                              max_wait_ms=self.max_wait_ms, name=f"{kind}-encoder")
            return self._batchers[key]

    def _texts(self, model: str, texts: list[str]) -> list[Any]:
        import numpy as np

        vectors = self.backend.model(model).encode_text(texts)
        return list(np.asarray(vectors.cpu(), dtype=np.float32))

    def _images(self, model: str, images: list[Any]) -> list[Any]:
        import numpy as np
        import torch

        clip = self.backend.model(model)
        # Crops may differ in size: each is preprocessed alone (resized to the model's input),
        # then the batch goes through the model once.
        pixels = torch.cat([clip.preprocess_batch(np.ascontiguousarray(im)[None]) for im in images])
        return list(np.asarray(clip.encode_image_tensors(pixels).cpu(), dtype=np.float32))

    def totals(self, kind: str) -> tuple[int, int]:
        """(model calls, items) of the ``kind`` encoders so far, over all models."""
        with self._lock:
            chosen = [b for (k, _), b in self._batchers.items() if k == kind]
        return sum(b.batches for b in chosen), sum(b.items for b in chosen)

    def close(self) -> None:
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for b in batchers:
            b.close()

    def metric_lines(self) -> list[str]:
        with self._lock:
            batchers = dict(self._batchers)
        lines = ["# HELP histoclip_encode_batches_total Model calls of the cross-client encoders.",
                 "# TYPE histoclip_encode_batches_total counter"]
        for (kind, model), b in sorted(batchers.items()):  # a bundle's folder name, not its server path
            lines.append(f'histoclip_encode_batches_total{{kind="{kind}",model="{os.path.basename(model)}"}} {b.batches}')
        lines += ["# HELP histoclip_encode_items_total Items encoded by them (items / batches = mean batch size).",
                  "# TYPE histoclip_encode_items_total counter"]
        for (kind, model), b in sorted(batchers.items()):
            lines.append(f'histoclip_encode_items_total{{kind="{kind}",model="{os.path.basename(model)}"}} {b.items}')
        return lines
