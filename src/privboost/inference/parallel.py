"""Spreading the Paillier-heavy part of a large batch over worker processes.

Deciding splits and walking trees is vectorised numpy in the server process; the homomorphic sums and packing
(gmpy2, which holds the GIL) run in a pool of spawned worker processes, each keeping its own compiled copy of
recently used models. Scores come back as separate packed ciphertexts per chunk; the client reads each
ciphertext's slot count, so the answer format is unchanged.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from privboost.inference.evaluate import CompiledModel, PackedScores
from privboost.inference.format import EncryptedModel

_worker_models: dict[tuple, CompiledModel] = {}
MIN_ROWS_PER_WORKER = 32


def _worker_scores(key: tuple, blob: bytes | None, leaves: np.ndarray) -> PackedScores:
    compiled = _worker_models.get(key)
    if compiled is None:
        if blob is None:
            raise LookupError("model not loaded in this worker")
        _worker_models.clear()  # keep one model per worker: memory stays bounded
        compiled = _worker_models[key] = CompiledModel(EncryptedModel.from_bytes(blob))
    return compiled.scores_of_leaves(leaves)


class ParallelScorer:
    """A pool of ``workers`` processes computing encrypted scores for chunks of a batch."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def scores(self, key: tuple, blob: bytes, compiled: CompiledModel, leaves: np.ndarray) -> PackedScores:
        """Encrypted scores of ``leaves`` (Q, T); small batches or one worker stay in this process."""
        chunks = min(self.workers, leaves.shape[0] // MIN_ROWS_PER_WORKER)
        if chunks <= 1:
            return compiled.scores_of_leaves(leaves)
        pool = self._get_pool()
        parts = np.array_split(leaves, chunks)
        futures = [pool.submit(_worker_scores, key, blob, part) for part in parts]
        result = PackedScores([], [])
        for future in futures:
            part = future.result()
            result.ciphertexts.extend(part.ciphertexts)
            result.slots.extend(part.slots)
        return result
