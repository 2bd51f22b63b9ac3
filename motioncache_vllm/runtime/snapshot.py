"""A generation's state between chunks, as plain data: :class:`GenerationSnapshot`.

After every finished chunk a chunked generation holds all it needs to go on:

- the video's latents: finished chunks final, unfinished ones still their initial noise
  (the units draw no randomness, so this *is* the RNG state of the rest of the request);
- the context K/V of the finished chunks, per CFG branch (the K/V of their commit passes),
  and each branch's last-frame block input of the last finished chunk (the motion score of
  the next chunk compares with it);
- the cache counters so far (with the scene-cut guard's history of chunk changes), and what the video is: its :class:`VideoPlan` (the request,
  then every extension).

A snapshot is a msgspec Struct (tensors as dtype + shape + raw bytes; no pickle), so it
can cross processes, sit in a Ray object store or a :class:`~motioncache_vllm.blocks.sessions.SessionStore`.
It is taken and used by :class:`~motioncache_vllm.runtime.stepwise.StepwiseGeneration`::

    snap = gen.snapshot()                           # at a chunk boundary (or when done)
    blob = snap.to_bytes()                          # ... another process, a restart ...
    gen = StepwiseGeneration.resume(pipe, GenerationSnapshot.from_bytes(blob))
                                                    # same frames as the uninterrupted run
    longer = StepwiseGeneration.extend(pipe, snap, prompt="...", num_frames=33, seed=1)
                                                    # a finished video, continued

The K/V may be left out (``include_kv=False``): resuming then recomputes it with one
commit pass per finished chunk and CFG branch (bit-identical: the same inputs through the
same calls), trading a few transformer calls for a much smaller snapshot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import torch

SNAPSHOT_FORMAT = 1

_DTYPES = ("float32", "float16", "bfloat16", "float64", "int8", "int32", "int64", "uint8", "bool")
"""Tensor dtypes a snapshot holds (torch is imported only when tensors are converted, so
the message types stay importable where torch is not needed)."""


class TensorData(msgspec.Struct, array_like=True, gc=False):
    """One CPU tensor as plain data: dtype name, shape, raw little-endian bytes (C order)."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "TensorData":
        import torch

        t = tensor.detach().to("cpu").contiguous()
        name = str(t.dtype).removeprefix("torch.")
        if name not in _DTYPES:
            raise TypeError(f"cannot snapshot a {name} tensor")
        return cls(name, tuple(t.shape), t.view(-1).view(torch.uint8).numpy().tobytes())

    def tensor(self) -> torch.Tensor:
        """A fresh tensor (owns its memory; the snapshot can be dropped)."""
        import torch

        if self.dtype not in _DTYPES:
            raise ValueError(f"snapshot tensor of unknown dtype {self.dtype!r}")
        dtype = getattr(torch, self.dtype)
        flat = (
            torch.frombuffer(bytearray(self.data), dtype=torch.uint8)
            if self.data
            else torch.empty(0, dtype=torch.uint8)
        )
        return flat.view(dtype).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return len(self.data)


class Segment(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One part of a video: the request that made it, or one extension of it."""

    prompt: str
    num_frames: int
    """Pixel frames of the whole video once this segment is done (cumulative, 4k+1)."""
    seed: int = 0
    """Seed of the segment's initial noise (the first segment: the request's seed)."""


class VideoPlan(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a video is made of. Generating the segments in order from nothing gives the
    same frames as any chain of snapshots/extensions of it: this is what an evicted or
    lost session is regenerated from."""

    segments: list[Segment]
    height: int
    width: int
    steps: int
    guidance: float
    max_sequence_length: int

    @classmethod
    def of(cls, request) -> "VideoPlan":
        """The plan of one (resolved) request: ``runtime.generate.ResolvedRequest``."""
        return cls(
            segments=[Segment(prompt=request.prompt, num_frames=request.num_frames, seed=request.seed)],
            height=request.height,
            width=request.width,
            steps=request.steps,
            guidance=request.guidance,
            max_sequence_length=request.max_sequence_length,
        )

    def extended(self, prompt: str, num_frames: int, seed: int = 0) -> "VideoPlan":
        """This plan plus one extension to ``num_frames`` pixel frames in all."""
        if num_frames <= self.num_frames:
            raise ValueError(f"an extension must add frames: {num_frames} <= the video's {self.num_frames}")
        return msgspec.structs.replace(
            self, segments=[*self.segments, Segment(prompt=prompt, num_frames=num_frames, seed=seed)]
        )

    def prefix(self, segments: int) -> "VideoPlan":
        """The plan of the video after its first ``segments`` segments."""
        return msgspec.structs.replace(self, segments=self.segments[:segments])

    @property
    def num_frames(self) -> int:
        return self.segments[-1].num_frames

    @property
    def prompt(self) -> str:
        """The prompt of the last segment (the one a generation of this plan is denoising)."""
        return self.segments[-1].prompt

    def resolved(self):
        """The request of the last segment, as the runtime takes it (``ResolvedRequest``)."""
        from motioncache_vllm.runtime.request import ResolvedRequest

        last = self.segments[-1]
        return ResolvedRequest(
            prompt=last.prompt,
            num_frames=last.num_frames,
            height=self.height,
            width=self.width,
            steps=self.steps,
            guidance=self.guidance,
            seed=last.seed,
            max_sequence_length=self.max_sequence_length,
        )


class CountersData(msgspec.Struct, kw_only=True):
    """``runtime.chunked.CacheCounters`` as plain data."""

    token_steps_total: int = 0
    token_steps_computed: int = 0
    commit_tokens: int = 0
    full_steps: int = 0
    partial_steps: int = 0
    skipped_steps: int = 0
    forced_blocks: int = 0
    chunk_changes: list[float] = msgspec.field(default_factory=list)
    """The scene-cut guard's signal per chunk (chunks 1, 2, ...)."""
    cut_chunks: list[int] = msgspec.field(default_factory=list)
    cut_band_chunks: list[int] = msgspec.field(default_factory=list)
    recompute_map: list[TensorData] = msgspec.field(default_factory=list)
    timings: dict[str, float] = msgspec.field(default_factory=dict)

    _SCALARS = (
        "token_steps_total",
        "token_steps_computed",
        "commit_tokens",
        "full_steps",
        "partial_steps",
        "skipped_steps",
        "forced_blocks",
    )

    @classmethod
    def of(cls, counters) -> "CountersData":
        return cls(
            **{k: int(getattr(counters, k)) for k in cls._SCALARS},
            chunk_changes=[float(x) for x in counters.chunk_changes],
            cut_chunks=[int(x) for x in counters.cut_chunks],
            cut_band_chunks=[int(x) for x in counters.cut_band_chunks],
            recompute_map=[TensorData.of(t) for t in counters.recompute_map],
            timings={k: float(v) for k, v in counters.timings.items()},
        )

    def restore(self, counters) -> None:
        """Write these figures into a ``CacheCounters``."""
        for k in self._SCALARS:
            setattr(counters, k, getattr(self, k))
        counters.recompute_map = [t.tensor() for t in self.recompute_map]
        counters.chunk_changes, counters.cut_chunks = list(self.chunk_changes), list(self.cut_chunks)
        counters.cut_band_chunks = list(self.cut_band_chunks)
        counters.timings.update(self.timings)


class GenerationSnapshot(msgspec.Struct, kw_only=True):
    """A chunked generation after ``chunks_done`` finished chunks (see module docstring)."""

    format: int = SNAPSHOT_FORMAT
    plan: VideoPlan
    chunks_done: int
    """Finished chunks; ``== num_chunks``: the video is complete (it can be extended)."""
    num_chunks: int
    latents: TensorData
    """(1, C, F, h, w) normalised latents of the plan's padded video."""
    kv: dict[str, list[TensorData]] | None = None
    """Per CFG branch (``cond``, ``uncond``): ``[K0, V0, K1, V1, ...]`` per layer, (1, tokens,
    heads, head_dim) over the finished chunks' tokens. None: recomputed on resume."""
    previous_last: dict[str, TensorData] | None = None
    """Per CFG branch: the last latent frame's block input of the last finished chunk
    (None with ``kv`` None, or before the first chunk)."""
    counters: CountersData = msgspec.field(default_factory=CountersData)
    extra: dict[str, Any] = msgspec.field(default_factory=dict)
    """Free room for the caller (e.g. a server's ids); never read by the runtime."""

    @property
    def done(self) -> bool:
        return self.chunks_done >= self.num_chunks

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors it holds (what a session store budgets)."""
        total = self.latents.nbytes + sum(t.nbytes for t in self.counters.recompute_map)
        for tensors in (self.kv or {}).values():
            total += sum(t.nbytes for t in tensors)
        for t in (self.previous_last or {}).values():
            total += t.nbytes
        return total

    def to_bytes(self) -> bytes:
        return msgspec.msgpack.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> "GenerationSnapshot":
        snap = msgspec.msgpack.decode(data, type=cls)
        if snap.format != SNAPSHOT_FORMAT:
            raise ValueError(f"snapshot format {snap.format}; this version reads {SNAPSHOT_FORMAT}")
        return snap


def chunks_of(num_frames: int, temporal_factor: int, block: int) -> int:
    """AR chunks of a ``num_frames``-frame video (latent frames padded to whole blocks)."""
    latent = (num_frames - 1) // temporal_factor + 1
    return -(-latent // block)
