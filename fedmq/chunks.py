"""Chunking: a message larger than the broker's payload limit, sent as numbered pieces.

Managed brokers cap a payload (AWS IoT Core at 128 KB), and a 1 MB model does not fit.
With ``max_payload`` set, a sender splits a larger ``update`` or ``global_model`` into
``chunk`` messages (docs/wire.md 3.8) that each carry the SHA-256 of the whole message;
the receiver's ``Reassembler`` puts them back together with bounded memory and a
timeout, and refuses the whole message on any inconsistency: never a partial one.

The retained global model goes out as a retained chunk per ``model/global/{index}``,
then a ``model_manifest`` on ``model/global`` (last), so a late subscriber finds every
piece; ``ModelChunks`` is the device's side of that, ``KINDS`` names both messages.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import numpy as np

from fedmq.config import MIN_PAYLOAD
from fedmq.envelope import MAX_BYTES, Message
from fedmq.errors import WireError
from fedmq.fields import Check, as_hex, as_int, as_str
from fedmq.tensors import decode_tensor

OF = ("update", "global_model")  # the kinds a chunk may carry a piece of
MAX_CHUNKS = 4096
HEADER_ROOM = 256  # bytes a chunk takes besides its data (about 160), with headroom
MAX_SIZE = 2**31 - 1


def _as_data(value: Any, name: str) -> bytes:
    arr = decode_tensor(value, name)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise WireError("bad_dtype", f"{name} must be a 1-D uint8 tensor")
    return arr.tobytes()


def geometry(size: int, count: int) -> int:
    """Bytes in every chunk but the last: ``ceil(size / count)``."""
    return -(-size // count)


@dataclass(frozen=True)
class Chunk(Message):
    """One piece of a message too large for one payload (docs/wire.md 3.8)."""

    of: str
    digest: str  # SHA-256 of the whole message, lowercase hex
    size: int
    count: int
    index: int
    data: bytes

    KIND: ClassVar[str] = "chunk"
    FIELDS: ClassVar[dict[str, Check]] = {
        "of": as_str(OF),
        "digest": as_hex(64),
        "size": as_int(1, MAX_SIZE),
        "count": as_int(2, MAX_CHUNKS),
        "index": as_int(0, MAX_CHUNKS - 1),
        "data": _as_data,
    }

    def __post_init__(self) -> None:
        # Every chunk's length follows from (size, count, index): a receiver checks each
        # one on arrival, and no chunk can be empty.
        step = geometry(self.size, self.count)
        if (self.count - 1) * step >= self.size:
            raise WireError("bad_value", f"{self.count} chunks cannot split {self.size} bytes")
        if self.index >= self.count:
            raise WireError("bad_value", f"index {self.index} is not below count {self.count}")
        want = min(step, self.size - self.index * step)
        if len(self.data) != want:
            raise WireError(
                "bad_value", f"chunk {self.index} holds {len(self.data)} bytes, not {want}"
            )

    def to_map(self) -> dict[str, Any]:
        out = super().to_map()
        out["data"] = np.frombuffer(self.data, dtype=np.uint8)
        return out


@dataclass(frozen=True)
class Manifest(Message):
    """The retained global model's table of contents, published after its chunks."""

    run: str
    version: int
    digest: str  # SHA-256 of the whole global_model payload
    size: int
    count: int
    rollbacks: int = 0

    KIND: ClassVar[str] = "model_manifest"
    FIELDS: ClassVar[dict[str, Check]] = {
        "run": as_hex(16),
        "version": as_int(0, 2**63 - 1),
        "digest": as_hex(64),
        "size": as_int(1, MAX_SIZE),
        "count": as_int(2, MAX_CHUNKS),
        "rollbacks": as_int(0, 2**31 - 1),
    }
    OPTIONAL: ClassVar[Mapping[str, Any]] = {"rollbacks": 0}


KINDS: dict[str, type[Message]] = {Chunk.KIND: Chunk, Manifest.KIND: Manifest}


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def split(payload: bytes, of: str, max_payload: int) -> list[Chunk]:
    """``payload`` as chunks of at most ``max_payload`` bytes each, encoded; [] if it fits."""
    if max_payload < MIN_PAYLOAD:
        raise ValueError(f"max_payload {max_payload} is below {MIN_PAYLOAD}")
    if len(payload) <= max_payload:
        return []
    count = geometry(len(payload), max_payload - HEADER_ROOM)
    if count > MAX_CHUNKS:
        what = f"{len(payload)} bytes need {count} chunks of at most {max_payload} bytes"
        raise WireError("too_large", f"{what}, more than {MAX_CHUNKS}: raise max_payload")
    step, digest = geometry(len(payload), count), sha256(payload)
    return [
        Chunk(of, digest, len(payload), count, i, payload[i * step : (i + 1) * step])
        for i in range(count)
    ]


def is_chunk(payload: bytes) -> bool:
    """Whether ``payload``'s ``kind`` is ``chunk``, read without building its tensors;
    anything odd is False, and the caller's own decoder then says why."""
    return kind_of(payload) == Chunk.KIND


def is_manifest(payload: bytes) -> bool:
    """Whether ``payload`` is a ``model_manifest`` rather than a whole global model."""
    return kind_of(payload) == Manifest.KIND


def kind_of(payload: bytes) -> object:
    """The top-level ``kind`` of a msgpack map, or None (other values are skipped)."""
    try:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(payload) + 1)
        unpacker.feed(payload)
        for _ in range(min(unpacker.read_map_header(), 64)):
            key = unpacker.unpack()
            if key == "kind":
                return unpacker.unpack()
            unpacker.skip()
    except Exception:  # msgpack raises many types for bad bytes; none has a kind
        pass
    return None


@dataclass(frozen=True)
class Resolved:
    """A message done with: whole (``payload``), refused (``reason``) or neither (a
    leftover chunk); ``tokens``: the chunks' handles, to acknowledge."""

    sender: str
    digest: str
    tokens: list[Any]
    payload: bytes | None = None
    reason: str | None = None
    message: str = ""


@dataclass
class _Partial:
    head: Chunk
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)
    tokens: list[Any] = field(default_factory=list)
    nbytes: int = 0


class Reassembler:
    """Chunks in, whole messages out, within fixed bounds.

    At most ``per_sender`` partial messages per sender, ``max_chunks`` chunks and
    ``max_bytes`` bytes held in all; past a bound the oldest partial is evicted
    (``chunk_evicted``). A partial older than ``timeout`` seconds is refused
    (``chunk_missing``); one larger than ``max_message`` at once (``too_large``).
    ``max_chunks`` must stay below the broker's in-flight window when the holder
    acknowledges a chunk only once its message is resolved: a full window would stop
    the broker delivering the very chunks that complete a message.
    """

    def __init__(
        self,
        *,
        max_message: int = MAX_BYTES,
        max_bytes: int = 4 * MAX_BYTES,
        max_chunks: int = 64,
        per_sender: int = 2,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        remember_refused: bool = True,
    ) -> None:
        """``remember_refused`` False: a refused (timed out, evicted) message may come
        again, as a device's retained model does on every SUBSCRIBE."""
        self.max_message, self.max_bytes, self.max_chunks = max_message, max_bytes, max_chunks
        self.per_sender, self.timeout, self.clock = per_sender, timeout, clock
        self.remember_refused = remember_refused
        self._partials: OrderedDict[tuple[str, str], _Partial] = OrderedDict()  # oldest first
        self._done: OrderedDict[tuple[str, str], None] = OrderedDict()  # recently resolved
        self.nbytes, self.nchunks = 0, 0

    def __len__(self) -> int:
        return len(self._partials)

    def offer(self, sender: str, chunk: Chunk, token: Any = None) -> list[Resolved]:
        """Take one chunk; what it resolved (its own message, or others evicted)."""
        key = (sender, chunk.digest)
        if key in self._done:  # a late piece of a message already whole or refused
            return [Resolved(sender, chunk.digest, [token])]
        if chunk.size > self.max_message or chunk.count > self.max_chunks:
            return [self._drop(key, "too_large", _too_large(chunk, self), token)]
        partial = self._partials.get(key)
        if partial is None:
            out = self._evict_sender(sender)
            partial = self._partials[key] = _Partial(chunk, self.clock())
        else:
            out = []
        head = partial.head
        if (head.of, head.size, head.count) != (chunk.of, chunk.size, chunk.count):
            what = "chunks of one digest disagree on of, size or count"
            return [*out, self._drop(key, "chunk_conflict", what, token)]
        held = partial.parts.get(chunk.index)
        if held is not None:
            if held != chunk.data:
                what = f"chunk {chunk.index} arrived twice with different data"
                return [*out, self._drop(key, "chunk_conflict", what, token)]
            return [*out, Resolved(sender, chunk.digest, [token])]  # a harmless repeat
        partial.parts[chunk.index] = chunk.data
        partial.tokens.append(token)
        partial.nbytes += len(chunk.data)
        self.nbytes += len(chunk.data)
        self.nchunks += 1
        if len(partial.parts) == head.count:
            return [*out, self._complete(key)]
        return out + self._evict_for_room(keep=key)

    def expire(self) -> list[Resolved]:
        """Refuse every partial message older than ``timeout`` (``chunk_missing``)."""
        now = self.clock()
        old = [k for k, p in self._partials.items() if now - p.started > self.timeout]
        out = []
        for key in old:
            p = self._partials[key]
            what = f"{len(p.parts)} of {p.head.count} chunks after {self.timeout:g} s"
            out.append(self._drop(key, "chunk_missing", what))
        return out

    def clear(self) -> None:
        """Forget every partial, e.g. on a new MQTT session (the broker resends what it
        did not have acknowledged; handles of the old session are void)."""
        self._partials.clear()
        # A message the old session completed may come again (its commit may not have
        # happened): reassemble it again; device + seq dedupe the replays.
        self._done.clear()
        self.nbytes = self.nchunks = 0

    def _complete(self, key: tuple[str, str]) -> Resolved:
        partial = self._pop(key)
        payload = b"".join(partial.parts[i] for i in range(partial.head.count))
        self._remember(key)
        if sha256(payload) != key[1]:
            what = f"the {len(payload)} bytes reassembled do not have the chunks' digest"
            return Resolved(*key, partial.tokens, reason="chunk_digest", message=what)
        return Resolved(*key, partial.tokens, payload=payload)

    def _evict_sender(self, sender: str) -> list[Resolved]:
        mine = [k for k in self._partials if k[0] == sender]
        out = []
        while len(mine) >= self.per_sender:
            what = f"a newer message from this sender (at most {self.per_sender} at once)"
            out.append(self._drop(mine.pop(0), "chunk_evicted", what))
        return out

    def _evict_for_room(self, keep: tuple[str, str]) -> list[Resolved]:
        out = []
        while self.nbytes > self.max_bytes or self.nchunks > self.max_chunks:
            key = next((k for k in self._partials if k != keep), keep)
            what = f"no room: {self.nchunks} chunks, {self.nbytes} bytes held"
            out.append(self._drop(key, "chunk_evicted", what))
            if key == keep:
                break
        return out

    def _drop(self, key: tuple[str, str], reason: str, what: str, token: Any = None) -> Resolved:
        tokens = self._pop(key).tokens if key in self._partials else []
        return self._refuse(key, tokens + ([token] if token is not None else []), reason, what)

    def _refuse(self, key: tuple[str, str], tokens: list[Any], reason: str, what: str) -> Resolved:
        if self.remember_refused:
            self._remember(key)
        return Resolved(*key, tokens, reason=reason, message=what)

    def _pop(self, key: tuple[str, str]) -> _Partial:
        partial = self._partials.pop(key)
        self.nbytes -= partial.nbytes
        self.nchunks -= len(partial.parts)
        return partial

    def _remember(self, key: tuple[str, str]) -> None:
        self._done[key] = None
        while len(self._done) > 4 * self.max_chunks:
            self._done.popitem(last=False)


def _too_large(chunk: Chunk, r: Reassembler) -> str:
    return (
        f"a chunked message of {chunk.size} bytes in {chunk.count} chunks exceeds "
        f"{r.max_message} bytes or {r.max_chunks} chunks"
    )


class ModelChunks:
    """A device's side of the chunked retained model: the manifest on ``model/global``
    and every chunk of its digest on ``model/global/{index}``, in either order (retained
    ones come in the broker's order, live ones chunks first). Chunks of another digest
    (an older version, or a newer one whose manifest is still to come) wait in the
    bounded reassembler and age out. One per MQTT session."""

    SENDER = "aggregator"

    def __init__(
        self,
        *,
        max_bytes: int = MAX_BYTES,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.reassembler = Reassembler(
            max_message=max_bytes,
            max_bytes=3 * max_bytes,  # the current version, a newer one, a stale one
            max_chunks=MAX_CHUNKS,
            per_sender=3,
            timeout=timeout,
            clock=clock,
            remember_refused=False,  # pull on ready: they come again on SUBSCRIBE
        )
        self.manifest: Manifest | None = None
        self._whole: OrderedDict[str, bytes] = OrderedDict()  # digest -> payload, ≤ 2

    def on_chunk(self, index: int, payload: bytes) -> bytes | None:
        """A chunk from ``model/global/{index}``: the whole model once its manifest is in.

        Raises ``WireError`` for a bad chunk, or when the manifest's model failed."""
        chunk = Chunk.decode(payload, max_bytes=self.max_bytes)
        if chunk.index != index or chunk.of != "global_model":
            raise WireError(
                "bad_value", f"chunk {chunk.index} of {chunk.of} on chunk topic {index}"
            )
        self.reassembler.expire()
        for r in self.reassembler.offer(self.SENDER, chunk):
            if r.payload is not None:
                self._whole[r.digest] = r.payload
                while len(self._whole) > 2:
                    self._whole.popitem(last=False)
            elif r.reason is not None and self.manifest and r.digest == self.manifest.digest:
                raise WireError(r.reason, f"global model {r.digest[:12]}: {r.message}")
        return self._ready()

    def on_manifest(self, manifest: Manifest) -> bytes | None:
        """The retained manifest: the whole model if its chunks are all in already."""
        self.manifest = manifest
        return self._ready()

    def _ready(self) -> bytes | None:
        m = self.manifest
        if m is None or m.digest not in self._whole:
            return None
        payload = self._whole.pop(m.digest)
        if len(payload) != m.size:
            raise WireError(
                "bad_value", f"manifest says {m.size} bytes, chunks hold {len(payload)}"
            )
        return payload


def assemble(pieces: ModelChunks, payload: bytes, index: int | None) -> bytes | None:
    """What arrived on ``model/global`` (``index`` None: a whole model or a manifest) or
    on ``model/global/{index}``: the whole model payload, or None while pieces are due."""
    if index is not None:
        return pieces.on_chunk(index, payload)
    if is_manifest(payload):
        return pieces.on_manifest(Manifest.decode(payload))
    return payload
