"""Micro-batching: the images of concurrent requests are scored together, off the event loop.

Requests wait in a bounded queue; one worker takes the first, then whatever else arrives within
``max_wait`` seconds up to ``max_batch`` images, and scores them in one forward pass on its own
thread. A full queue is refused at once (the caller answers 503) instead of stalling everyone.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor


class Busy(Exception):
    """The queue is full: try again later."""


class MicroBatcher:
    def __init__(self, score, max_batch: int = 16, max_wait: float = 0.005, max_queue: int = 64):
        """``score(images) -> scores`` is called on the worker thread with up to ``max_batch``
        images (more when one request alone has more); ``max_batch=1`` turns batching off."""
        self.score_fn, self.max_batch, self.max_wait = score, max(1, max_batch), max_wait
        self.max_queue = max_queue
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fakescope-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def score(self, images: list) -> list[float]:
        if not images:
            return []
        fut = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((images, fut))
        except asyncio.QueueFull:
            raise Busy from None
        return await fut

    async def on_model_thread(self, fn, *args):
        """``fn(*args)`` on the worker thread, between batches. Whatever else uses the model
        (Grad-CAM's hooks and backward pass) must run there: two threads in one network at once
        corrupted the heap (a served explain request crashed the process)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            n = len(batch[0][0])
            deadline = loop.time() + self.max_wait
            while n < self.max_batch and (left := deadline - loop.time()) > 0:
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
                batch.append(item)
                n += len(item[0])
            images = [im for imgs, _ in batch for im in imgs]
            try:
                scores = await loop.run_in_executor(self._pool, self.score_fn, images)
            except Exception as e:  # the model failed: every waiting request hears why
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            i = 0
            for imgs, fut in batch:
                if not fut.done():
                    fut.set_result(list(scores[i : i + len(imgs)]))
                i += len(imgs)
