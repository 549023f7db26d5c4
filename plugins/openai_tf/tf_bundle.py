"""Read TensorFlow V2 checkpoints ("tensor bundles") without TensorFlow.

OpenAI's GPT-2 weights are published as TensorFlow checkpoints, and installing
TensorFlow is the most common install failure for users. This module reads such
a checkpoint with numpy and the standard library only:

* ``<prefix>.index`` is a LevelDB-style table (TensorFlow's ``core/lib/io``
  format) mapping "" to a ``BundleHeaderProto`` and each tensor name to a
  ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked CRC32C);
* ``<prefix>.data-0000k-of-0000n`` holds the raw little-endian tensor bytes.

The protobuf messages are decoded by hand; every table block and every tensor is
checked against its CRC32C, as TensorFlow does. Problems raise
:class:`TFBundleError` with a one-line message naming the file (and tensor).
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

__all__ = ["TFBundleError", "list_variables", "read_variables"]


class TFBundleError(ValueError):
    """A checkpoint is missing, corrupted, truncated or uses an unsupported feature."""


# --------------------------------------------------------------------------- dtypes

# TensorFlow DataType enum -> (name, numpy dtype of the stored bytes or None).
_DTYPES: dict[int, tuple[str, np.dtype | None]] = {
    1: ("DT_FLOAT", np.dtype("<f4")),
    2: ("DT_DOUBLE", np.dtype("<f8")),
    3: ("DT_INT32", np.dtype("<i4")),
    4: ("DT_UINT8", np.dtype("u1")),
    5: ("DT_INT16", np.dtype("<i2")),
    6: ("DT_INT8", np.dtype("i1")),
    7: ("DT_STRING", None),
    8: ("DT_COMPLEX64", np.dtype("<c8")),
    9: ("DT_INT64", np.dtype("<i8")),
    10: ("DT_BOOL", np.dtype("?")),
    14: ("DT_BFLOAT16", np.dtype("<u2")),  # upcast to float32 when read
    17: ("DT_UINT16", np.dtype("<u2")),
    18: ("DT_COMPLEX128", np.dtype("<c16")),
    19: ("DT_HALF", np.dtype("<f2")),
    20: ("DT_RESOURCE", None),
    21: ("DT_VARIANT", None),
    22: ("DT_UINT32", np.dtype("<u4")),
    23: ("DT_UINT64", np.dtype("<u8")),
}
_BFLOAT16 = 14


def _dtype_name(enum: int) -> str:
    return _DTYPES[enum][0] if enum in _DTYPES else f"DT_<{enum}>"


def _stored_dtype(enum: int) -> np.dtype | None:
    """The numpy dtype of a tensor's stored bytes, or None if this reader cannot read it."""
    return _DTYPES[enum][1] if enum in _DTYPES else None


def _result_dtype(enum: int) -> np.dtype | str:
    """The dtype :func:`read_variables` returns, or the enum name if unsupported."""
    stored = _stored_dtype(enum)
    if stored is None:
        return _dtype_name(enum)
    return np.dtype(np.float32) if enum == _BFLOAT16 else stored.newbyteorder("=")


# --------------------------------------------------------------------------- CRC32C
# CRC-32C (Castagnoli), as TensorFlow uses for table blocks and tensor bytes.
# The pure version runs many independent lanes at once with numpy (slicing by 8
# bytes through 16-bit tables), then folds the lane CRCs together using the
# linearity of CRCs: advancing a register over n zero bytes is a linear map,
# stored as four 256-entry tables (one per register byte).

_POLY = 0x82F63B78  # bit-reflected Castagnoli polynomial
_LANES = (16384, 1024, 64)  # lane counts tried in turn; the last < 512 bytes go bytewise


def _byte_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = (table >> 1) ^ np.where(table & 1, np.uint32(_POLY), np.uint32(0))
    return table


_TABLE = _byte_table()
_TABLE_LIST = _TABLE.tolist()
_BASIS = np.arange(256, dtype=np.uint32) << np.array([[0], [8], [16], [24]], np.uint32)


def _advance_one_byte(reg: np.ndarray) -> np.ndarray:
    return _TABLE[reg & 0xFF] ^ (reg >> 8)


def _wide_tables() -> np.ndarray:
    """16-bit tables for feeding 8 bytes at once: register bytes 0-1, 2-3, data bytes 4-5, 6-7."""
    after = [_TABLE]  # after[k][v]: register after byte v followed by k zero bytes
    for _ in range(7):
        after.append(_advance_one_byte(after[-1]))
    v = np.arange(65536, dtype=np.uint32)
    return np.stack([after[7 - 2 * i][v & 0xFF] ^ after[6 - 2 * i][v >> 8] for i in range(4)])


_WIDE = _wide_tables()


def _apply(op: np.ndarray, reg: np.ndarray) -> np.ndarray:
    return op[0][reg & 0xFF] ^ op[1][(reg >> 8) & 0xFF] ^ op[2][(reg >> 16) & 0xFF] ^ op[3][reg >> 24]


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    return _apply(outer, _apply(inner, _BASIS))


@functools.lru_cache(maxsize=64)
def _zeros_operator(n: int) -> np.ndarray:
    """The linear map advancing a CRC register over ``n`` zero bytes."""
    result, power = _BASIS, _advance_one_byte(_BASIS)
    while n:
        if n & 1:
            result = _compose(power, result)
        power = _compose(power, power)
        n >>= 1
    return result


def _crc_lanes(words: np.ndarray, reg: int) -> np.ndarray:
    """CRC registers of each row of ``words`` (uint16), row 0 starting from ``reg``, the others from 0."""
    state = np.zeros(len(words), np.uint32)
    state[0] = reg
    w0, w1, w2, w3 = _WIDE
    for j in range(0, words.shape[1], 4):
        state = (w0[(state & 0xFFFF) ^ words[:, j]] ^ w1[(state >> 16) ^ words[:, j + 1]]
                 ^ w2[words[:, j + 2]] ^ w3[words[:, j + 3]])
    return state


def _fold_lanes(regs: np.ndarray, lane_bytes: int) -> int:
    """The register of the lanes' concatenation (pairwise: shift the left one, xor the right)."""
    op = _zeros_operator(lane_bytes)
    while len(regs) > 1:
        regs = _apply(op, regs[0::2]) ^ regs[1::2]
        op = _compose(op, op)
    return int(regs[0])


def _crc32c_numpy(data) -> int:
    """CRC32C of a bytes-like object, with numpy only (about 300 MB/s)."""
    buf = np.frombuffer(data, np.uint8)
    reg = 0xFFFFFFFF
    for lanes in _LANES:
        lane_bytes = len(buf) // (8 * lanes) * 8
        if lane_bytes:
            words = buf[: lanes * lane_bytes].view("<u2").reshape(lanes, -1)
            reg = _fold_lanes(_crc_lanes(words, reg), lane_bytes)
            buf = buf[lanes * lane_bytes:]
    for byte in buf.tolist():
        reg = _TABLE_LIST[(reg ^ byte) & 0xFF] ^ (reg >> 8)
    return reg ^ 0xFFFFFFFF


def _native_crc32c():
    """A compiled CRC32C from the optional ``crc32c`` or ``google-crc32c`` package, if installed."""
    try:
        import crc32c
        return crc32c.crc32c
    except ImportError:
        pass
    try:
        import google_crc32c
        if google_crc32c.implementation == "c":
            return lambda data: google_crc32c.value(bytes(data))  # it takes only read-only buffers
    except ImportError:
        pass
    return None


_crc32c = _native_crc32c() or _crc32c_numpy


def _unmask(masked: int) -> int:
    """Undo TensorFlow's CRC masking (crc32c::Mask), used for stored checksums."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --------------------------------------------------------------------------- wire formats

def _varint(buf: bytes, pos: int, path) -> tuple[int, int]:
    """Decode a little-endian base-128 varint at ``pos``; return (value, next position)."""
    value = shift = 0
    while pos < len(buf) and shift < 70:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
    raise TFBundleError(f"{path}: corrupted index (bad varint at byte {pos})")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _proto_fields(buf: bytes, path) -> Iterator[tuple[int, int | bytes]]:
    """Yield (field number, value) of a protobuf message: ints for scalars, bytes for messages."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, path)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(buf, pos, path)
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        elif wire_type == 2:
            length, pos = _varint(buf, pos, path)
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise TFBundleError(f"{path}: corrupted index (protobuf wire type {wire_type})")
        if pos > len(buf):
            raise TFBundleError(f"{path}: corrupted index (protobuf field {field} runs past its entry)")
        yield field, value


@dataclass(frozen=True)
class _Entry:
    """The parts of a BundleEntryProto this reader uses."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int
    partitioned: bool


def _parse_shape(buf: bytes, path) -> tuple[int, ...]:
    dims = []
    for field, value in _proto_fields(buf, path):
        if field == 2:  # TensorShapeProto.dim
            dims.append(_signed64(dict(_proto_fields(value, path)).get(1, 0)))
    return tuple(dims)


_ENTRY_SCALARS = {1: "dtype", 3: "shard_id", 4: "offset", 5: "size", 6: "crc32c"}


def _parse_entry(buf: bytes, path) -> _Entry:
    fields = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": 0, "partitioned": False}
    for field, value in _proto_fields(buf, path):
        if field in _ENTRY_SCALARS:
            fields[_ENTRY_SCALARS[field]] = value
        elif field == 2:
            fields["shape"] = _parse_shape(value, path)
        elif field == 7:  # slices
            fields["partitioned"] = True
    return _Entry(**fields)


# --------------------------------------------------------------------------- table (.index)

_FOOTER_SIZE = 48
_TABLE_MAGIC = 0xDB4775248B80FB57
_BLOCK_TRAILER_SIZE = 5  # compression type byte + masked crc32c


def _read_block(table: bytes, handle: bytes, path) -> bytes:
    """Check and return the contents of the block a BlockHandle (offset, size) points to."""
    offset, pos = _varint(handle, 0, path)
    size, _ = _varint(handle, pos, path)
    end = offset + size + _BLOCK_TRAILER_SIZE
    if end > len(table):
        raise TFBundleError(f"{path}: corrupted index (block at {offset} runs past the end of the file)")
    block, kind = table[offset:offset + size], table[offset + size]
    (stored,) = struct.unpack_from("<I", table, offset + size + 1)
    if _unmask(stored) != _crc32c(table[offset:offset + size + 1]):
        raise TFBundleError(f"{path}: corrupted index (checksum mismatch in block at byte {offset})")
    if kind == 1:
        raise TFBundleError(f"{path}: Snappy-compressed index blocks are not supported")
    if kind != 0:
        raise TFBundleError(f"{path}: corrupted index (unknown block compression type {kind})")
    return block


def _block_entries(block: bytes, path) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) of a block: prefix-compressed keys, then restart offsets and their count."""
    if len(block) < 4:
        raise TFBundleError(f"{path}: corrupted index (block of {len(block)} bytes)")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 * (num_restarts + 1)
    if limit < 0:
        raise TFBundleError(f"{path}: corrupted index (bad restart count {num_restarts})")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, path)
        unshared, pos = _varint(block, pos, path)
        value_len, pos = _varint(block, pos, path)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise TFBundleError(f"{path}: corrupted index (bad block entry at byte {pos})")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + value_len]
        pos += value_len


def _table_entries(table: bytes, path) -> Iterator[tuple[bytes, bytes]]:
    """Yield every (key, value) of a table, via the index block named in its footer."""
    if len(table) < _FOOTER_SIZE:
        raise TFBundleError(f"{path}: corrupted index ({len(table)} bytes is shorter than a table footer)")
    footer = table[-_FOOTER_SIZE:]
    if int.from_bytes(footer[-8:], "little") != _TABLE_MAGIC:
        raise TFBundleError(f"{path}: not a TensorFlow checkpoint index (bad magic number)")
    _, pos = _varint(footer, 0, path)  # metaindex handle: offset, size (unused)
    _, pos = _varint(footer, pos, path)
    index_block = _read_block(table, footer[pos:], path)
    for _, handle in _block_entries(index_block, path):
        yield from _block_entries(_read_block(table, handle, path), path)


def _read_index(prefix) -> tuple[int, dict[str, _Entry]]:
    """Return (number of data shards, tensor name -> entry) from ``<prefix>.index``."""
    path = f"{os.fspath(prefix)}.index"
    try:
        with open(path, "rb") as f:
            table = f.read()
    except FileNotFoundError:
        raise TFBundleError(f"{path}: checkpoint index not found "
                            "(pass the prefix, e.g. 'models/124M/model.ckpt')") from None
    header, entries = None, {}
    for key, value in _table_entries(table, path):
        if key == b"":
            header = dict(_proto_fields(value, path))
        elif not key.startswith(b"\x00"):  # keys starting with 0 hold slices of partitioned tensors
            entries[key.decode("utf-8", "replace")] = _parse_entry(value, path)
    if header is None:
        raise TFBundleError(f"{path}: corrupted index (no bundle header entry)")
    if header.get(2, 0) != 0:
        raise TFBundleError(f"{path}: big-endian checkpoints are not supported")
    return header.get(1, 1), entries


# --------------------------------------------------------------------------- public API

def list_variables(prefix: str | os.PathLike) -> dict[str, tuple[np.dtype | str, tuple[int, ...]]]:
    """Names, dtypes and shapes of the tensors in a checkpoint, read from ``<prefix>.index`` alone.

    The dtype is the one :func:`read_variables` returns (float32 for bfloat16); for
    dtypes it cannot read (strings, resources, unknown ones) it is the TensorFlow
    enum name instead, e.g. ``"DT_STRING"``.
    """
    _, entries = _read_index(prefix)
    return {name: (_result_dtype(e.dtype), e.shape) for name, e in entries.items()}


def read_variables(prefix: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read tensors of a checkpoint as numpy arrays, checking each one's CRC32C.

    ``names`` selects tensors; by default every tensor with a readable dtype is
    read and the others (e.g. the string object graph of TF2 checkpoints) are
    skipped. bfloat16 tensors are returned upcast to float32 (exactly).
    """
    num_shards, entries = _read_index(prefix)
    index_path = f"{os.fspath(prefix)}.index"
    if names is None:
        names = [n for n, e in entries.items() if _stored_dtype(e.dtype) is not None]
    names = [names] if isinstance(names, str) else list(names)
    wanted = {}
    for name in names:
        if name not in entries:
            raise TFBundleError(f"{index_path}: no tensor named {name!r}")
        entry = entries[name]
        if _stored_dtype(entry.dtype) is None:
            raise TFBundleError(f"{index_path}: tensor {name!r} has unsupported dtype {_dtype_name(entry.dtype)}")
        if entry.partitioned:
            raise TFBundleError(f"{index_path}: tensor {name!r} is partitioned (sliced); not supported")
        if not 0 <= entry.shard_id < num_shards:
            raise TFBundleError(f"{index_path}: tensor {name!r} names shard {entry.shard_id} of {num_shards}")
        wanted[name] = entry
    result = {}
    for shard in sorted({e.shard_id for e in wanted.values()}):
        path = f"{os.fspath(prefix)}.data-{shard:05d}-of-{num_shards:05d}"
        in_shard = sorted((e.offset, n) for n, e in wanted.items() if e.shard_id == shard)
        try:
            with open(path, "rb") as f:
                for _, name in in_shard:
                    result[name] = _read_tensor(f, path, name, wanted[name])
        except FileNotFoundError:
            raise TFBundleError(f"{path}: checkpoint data file not found") from None
    return {name: result[name] for name in names}


def _read_tensor(f, path: str, name: str, entry: _Entry) -> np.ndarray:
    dtype = _stored_dtype(entry.dtype)
    count = int(np.prod(entry.shape, dtype=np.int64))
    if count < 0 or count * dtype.itemsize != entry.size:
        raise TFBundleError(f"{path}: tensor {name!r} of shape {list(entry.shape)} and dtype "
                            f"{_dtype_name(entry.dtype)} cannot take the index's {entry.size} bytes")
    buf = bytearray(entry.size)
    f.seek(entry.offset)
    if f.readinto(buf) != entry.size:
        raise TFBundleError(f"{path}: truncated; tensor {name!r} needs bytes {entry.offset}.."
                            f"{entry.offset + entry.size} but the file has {os.fstat(f.fileno()).st_size} bytes")
    if _crc32c(buf) != _unmask(entry.crc32c):
        raise TFBundleError(f"{path}: checksum mismatch for tensor {name!r} (corrupted data)")
    array = np.frombuffer(buf, dtype).reshape(entry.shape)
    if entry.dtype == _BFLOAT16:
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(dtype.newbyteorder("="), copy=False)
