"""What the model deployments share: thread sizing from the replica's CPU claim, the encoders'
batching and feature cache."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ray import serve

from modalities.errors import MediaError
from modalities.feature_cache import FeatureCache
from modalities.heap import trim_heap
from serve import metrics

MAX_ENCODER_BATCH = 8
ENCODER_BATCH_WAIT_S = 0.01
TRIM_AFTER_INPUT_BYTES = 256 * 2**10  # a batch with this much media input hands its freed heap back


def _input_bytes(request: Any) -> int:
    """The media bytes of one encoder request (the bytes themselves, or the first item of a tuple)."""
    data = request[0] if isinstance(request, tuple) else request
    return len(data) if isinstance(data, (bytes, bytearray)) else 0


def claimed_cpus() -> int:
    """The CPUs this replica claimed from Ray (at least 1), to size torch's thread pool.

    Ray starts actors with OMP_NUM_THREADS=1 for claims of one CPU or less, which would leave torch
    single-threaded whatever the deployment claimed; the runtimes set their thread count from
    config instead, and a config that names none gets the claim.
    """
    import ray

    if not ray.is_initialized():  # plain tests: asking for the runtime context would start Ray
        return max(1, os.cpu_count() or 1)
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except AssertionError:  # a driver (a test or a bench with a cluster of its own), not a replica
        return max(1, os.cpu_count() or 1)
    return max(1, int(round(cpus)))


def with_threads(model_config):
    """The model config with `threads` filled in from the replica's CPU claim when unset."""
    if model_config.threads is not None:
        return model_config
    return model_config.model_copy(update={"threads": claimed_cpus()})


def feature_cache(mib: float) -> FeatureCache:
    return FeatureCache(int(mib * 2**20))


def cache_info(cache: FeatureCache) -> dict[str, int]:
    stats = cache.stats()
    return {"hits": stats.hits, "misses": stats.misses, "entries": stats.entries, "bytes": stats.bytes}


class BatchedEncoder:
    """An encoder deployment: requests are gathered into batches (`@serve.batch`), one batch's model
    work runs in a worker thread (`_run`, one result or `MediaError` per request, so a bad item fails
    only its own request), and its size and latency are recorded under the modality's name."""

    kind: str  # the registry's modality key, the metrics tag

    def _run(self, requests: list[Any]) -> list[Any]:
        raise NotImplementedError

    def _run_and_release(self, requests: list[Any]) -> list[Any]:
        results = self._run(requests)
        # Decoding large media (an hour of audio refused for its length, a big image) leaves its
        # freed buffers in glibc's arenas; hand them back so the replica returns to its idle size.
        if sum(_input_bytes(r) for r in requests) >= TRIM_AFTER_INPUT_BYTES:
            trim_heap()
        return results

    @serve.batch(max_batch_size=MAX_ENCODER_BATCH, batch_wait_timeout_s=ENCODER_BATCH_WAIT_S)
    async def _batch(self, requests: list[Any]) -> list[Any]:
        metrics.ENCODER_BATCH_SIZE.observe(len(requests), tags={"encoder": self.kind})
        start = time.perf_counter()
        results = await asyncio.to_thread(self._run_and_release, requests)
        metrics.ENCODER_LATENCY.observe(time.perf_counter() - start, tags={"encoder": self.kind})
        return results

    async def _submit(self, request: Any) -> Any:
        result = await self._batch(request)
        if isinstance(result, MediaError):
            raise result
        return result
