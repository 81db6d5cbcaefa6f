"""Resumable batch sources for the trainer: contiguous TBPTT streams and shuffled sequences.

Each source is an endless iterator of :class:`Batch` with a ``state_dict`` that records its
position exactly, so a resumed run reads the same batches an uninterrupted one would.
``rank``/``world_size`` take this process's contiguous share of every global batch, so the
union over ranks is the 1-process batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class Batch:
    """One training batch: ``data`` for the task, ``tokens`` for throughput, and whether it
    starts the streams afresh (the trainer then drops the carried state)."""

    data: Any
    tokens: int
    size: int  # sequences in this process's batch
    starts_streams: bool = False


def _share(global_batch: int, rank: int, world_size: int) -> slice:
    if global_batch % world_size:
        raise ValueError(f"batch_size {global_batch} must be divisible by the number of processes {world_size}")
    per_rank = global_batch // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


class _ChunkedStreams:
    """Chunks ``0 ... chunks - 1`` of the current streams, in order, then the next epoch's: the
    position is ``(epoch, chunk)``. A subclass sets ``chunks`` and makes chunk ``c``'s batch."""

    stateful = True
    chunks: int
    epoch: int = 0
    chunk: int = 0

    def _batch(self, chunk: int) -> Batch:
        raise NotImplementedError

    def __iter__(self) -> _ChunkedStreams:
        return self

    def __next__(self) -> Batch:
        if self.chunk == self.chunks:
            self.epoch, self.chunk = self.epoch + 1, 0
        batch = self._batch(self.chunk)
        self.chunk += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "chunk": self.chunk}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.chunk = int(state["epoch"]), int(state["chunk"])


class StreamBatches(_ChunkedStreams):
    """Truncated-BPTT batches over one long token sequence, char-rnn style.

    The ``L`` tokens are laid out as ``batch_size`` contiguous streams of ``S = (L - 1) // B``
    steps each (a strided view: nothing is copied); chunk ``c`` is columns ``c*K ... c*K+K`` of
    every stream, inputs ``(B, K)`` and targets shifted by one. Consecutive chunks continue
    each stream, so the state is carried across them; after the last whole chunk the streams
    start again (``starts_streams``). Tokens past the last whole chunk are not used.

    ``epoch_tokens(epoch)``, if given, returns the tokens of each epoch (the same length as
    ``tokens``): a data augmentation that changes the text between epochs, such as
    :class:`rnnkit.data.speakers.SpeakerRenaming`. It must be a function of the epoch, so that
    a resumed run reads the same batches.
    """

    def __init__(
        self, tokens: Tensor, batch_size: int, bptt_steps: int, rank: int = 0, world_size: int = 1,
        epoch_tokens: Callable[[int], Tensor] | None = None,
    ) -> None:  # fmt: skip
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        stream_length = (tokens.numel() - 1) // batch_size
        self.chunks = stream_length // bptt_steps
        if self.chunks < 1:
            raise ValueError(
                f"the corpus has {tokens.numel()} tokens, fewer than one chunk needs "
                f"(batch_size * bptt_steps + 1 = {batch_size * bptt_steps + 1})"
            )
        self.bptt_steps, self.batch_size, self.stream_length = bptt_steps, batch_size, stream_length
        self.share, self.epoch_tokens = _share(batch_size, rank, world_size), epoch_tokens
        self.length = tokens.numel()
        self.streams = self._streams(tokens)
        self._streams_epoch: int | None = None  # with epoch_tokens: the epoch self.streams holds

    def _streams(self, tokens: Tensor) -> Tensor:
        if tokens.shape != (self.length,):
            raise ValueError(f"epoch_tokens must return {self.length} tokens (1-D), got shape {tuple(tokens.shape)}")
        step = tokens.stride(0)
        return tokens.as_strided((self.batch_size, self.stream_length + 1), (self.stream_length * step, step))[self.share]

    def _batch(self, chunk: int) -> Batch:
        if self.epoch_tokens is not None and self._streams_epoch != self.epoch:
            self.streams, self._streams_epoch = self._streams(self.epoch_tokens(self.epoch)), self.epoch
        start = chunk * self.bptt_steps
        window = self.streams[:, start : start + self.bptt_steps + 1]
        inputs, targets = window[:, :-1].contiguous(), window[:, 1:].contiguous()
        return Batch((inputs, targets), inputs.numel(), inputs.shape[0], chunk == 0)


class ShuffledBatches:
    """Full-BPTT batches of whole examples, reshuffled every epoch with a seeded generator.

    ``collate(list_of_examples) -> (data, tokens)`` builds the batch (padding plus ``lengths``).
    The permutation of epoch ``e`` depends only on ``(seed, e)``; incomplete final batches are
    dropped so every step has the same batch size on every rank.

    ``length(example)``, if given, buckets by length to waste less on padding (fastai's "sortish"
    sampler): each pool of ``pool`` shuffled batches is sorted by length and cut into batches,
    and the batches are then shuffled, so a batch holds similar lengths but its neighbours and
    its members still change every epoch.
    """

    stateful = False

    def __init__(
        self,
        examples: Sequence[Any],
        batch_size: int,
        collate: Callable[[list[Any]], tuple[Any, int]],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        length: Callable[[Any], int] | None = None,
        pool: int = 50,
    ) -> None:
        if len(examples) < batch_size:
            raise ValueError(f"there are {len(examples)} training examples, fewer than one batch ({batch_size})")
        self.examples, self.batch_size, self.collate, self.seed = examples, batch_size, collate, seed
        self.lengths = None if length is None else torch.tensor([length(e) for e in examples])
        self.pool = pool
        self.share = _share(batch_size, rank, world_size)
        self.batches_per_epoch = len(examples) // batch_size
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.examples), generator=generator)
        if self.lengths is None:
            return order
        size = self.pool * self.batch_size
        pools = [chunk[self.lengths[chunk].argsort(stable=True)] for chunk in order.split(size)]
        batches = torch.cat(pools)[: self.batches_per_epoch * self.batch_size].view(-1, self.batch_size)
        return batches[torch.randperm(len(batches), generator=generator)].flatten()

    def __iter__(self) -> ShuffledBatches:
        return self

    def __next__(self) -> Batch:
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        chosen = self._order[self.index * self.batch_size : (self.index + 1) * self.batch_size][self.share]
        self.index += 1
        data, tokens = self.collate([self.examples[i] for i in chosen.tolist()])
        return Batch(data, tokens, len(chosen))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self.epoch)


class GeneratedBatches:
    """Batches made by ``make(batch_size, generator) -> (data, tokens)``, the generator seeded
    from ``(seed, step)`` so the sequence of batches is fixed and resumes exactly. Each rank
    takes its contiguous share of the global batch."""

    stateful = False

    def __init__(self, make: Callable[[int, torch.Generator], tuple[Any, int]], batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:  # fmt: skip
        self.make, self.batch_size, self.seed = make, batch_size, seed
        self.share = _share(batch_size, rank, world_size)
        self.step = 0

    def __iter__(self) -> GeneratedBatches:
        return self

    def __next__(self) -> Batch:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        self.step += 1
        data, tokens = self.make(self.batch_size, generator)
        local = tuple(part[self.share] for part in data)
        return Batch(local, tokens * (self.share.stop - self.share.start) // self.batch_size, self.share.stop - self.share.start)

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


class OffsetStreams(_ChunkedStreams):
    """Truncated-BPTT batches over ``batch_size`` streams of ``length`` consecutive positions
    each, cut from ``first ... total - 1`` at offsets drawn afresh every epoch (seeded by
    ``(seed, epoch)``; streams may overlap). An epoch is the ``length // bptt_steps`` chunks of
    one set of streams; the state is carried across them and dropped when new streams start.

    ``data`` of a batch is the positions ``(B, K)``; a task can warm a fresh state up on the
    positions before a stream's first (at least ``first`` of them exist).
    """

    def __init__(self, total: int, length: int, bptt_steps: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, first: int = 0) -> None:  # fmt: skip
        if not bptt_steps <= length <= total - first:
            raise ValueError(f"streams of {length} steps need bptt_steps <= length <= the {total - first} positions there are")
        self.total, self.length, self.bptt_steps, self.batch_size, self.seed = total, length, bptt_steps, batch_size, seed
        self.first = first
        self.share = _share(batch_size, rank, world_size)
        self.chunks = length // bptt_steps

    def _offsets(self) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randint(self.first, self.total - self.length + 1, (self.batch_size,), generator=generator)[self.share]

    def _batch(self, chunk: int) -> Batch:
        steps = torch.arange(chunk * self.bptt_steps, (chunk + 1) * self.bptt_steps)
        positions = self._offsets()[:, None] + steps[None, :]  # this epoch's offsets
        return Batch(positions, positions.numel(), positions.shape[0], chunk == 0)


class PhasedBatches:
    """The first ``steps`` batches from ``first``, every later one from ``then``: e.g. language-
    model pretraining on unlabelled texts, then fine-tuning on labelled ones, in one run."""

    stateful = False

    def __init__(self, first: Any, steps: int, then: Any) -> None:
        self.first, self.steps, self.then = first, steps, then
        self.drawn = 0

    def __iter__(self) -> PhasedBatches:
        return self

    def __next__(self) -> Batch:
        self.drawn += 1
        return next(self.first if self.drawn <= self.steps else self.then)

    def state_dict(self) -> dict[str, Any]:
        return {"drawn": self.drawn, "first": self.first.state_dict(), "then": self.then.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.drawn = int(state["drawn"])
        self.first.load_state_dict(state["first"])
        self.then.load_state_dict(state["then"])
