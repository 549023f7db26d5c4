"""A pure-Python writer of TensorFlow V2 checkpoints (tensor bundles), for tests: it writes OpenAI's
checkpoint layout where TensorFlow is not installed. test_tf_bundle.py checks that TensorFlow itself
reads what it writes, so tests built on it are not self-confirming. Its CRC32C is the bitwise
reference (RFC 3720), independent of gptkit's reader.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


# --------------------------------------------------------------------------- reference CRC32C

def _reference_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_REF_TABLE = _reference_table()


def reference_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _REF_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = reference_crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------- test bundle writer

DT_FLOAT, DT_DOUBLE, DT_INT32, DT_STRING, DT_INT64, DT_BFLOAT16, DT_HALF = 1, 2, 3, 7, 9, 14, 19
_ENUMS = {np.dtype(np.float32): DT_FLOAT, np.dtype(np.float64): DT_DOUBLE, np.dtype(np.int32): DT_INT32,
          np.dtype(np.int64): DT_INT64, np.dtype(np.float16): DT_HALF}


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def entry_proto(dtype: int, shape, shard_id: int, offset: int, size: int, crc: int) -> bytes:
    shape_proto = b"".join(field_bytes(2, field_varint(1, dim)) for dim in shape)
    return (field_varint(1, dtype) + field_bytes(2, shape_proto) + field_varint(3, shard_id)
            + field_varint(4, offset) + field_varint(5, size) + varint(6 << 3 | 5) + struct.pack("<I", crc))


def header_proto(num_shards: int) -> bytes:
    return field_varint(1, num_shards) + field_bytes(3, field_varint(1, 1))  # version.producer = 1


def block_contents(entries, restart_interval: int) -> bytes:
    out, restarts, last = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(last)) and key[shared] == last[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        last = key
    restarts = restarts or [0]
    return bytes(out) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def write_table(path, entries, *, block_size=4096, restart_interval=16, compression=0):
    """Write sorted (key, value) pairs as a LevelDB-style table, the format of TF's .index files."""
    table = bytearray()

    def add_block(contents: bytes) -> bytes:
        handle = varint(len(table)) + varint(len(contents))
        kind = bytes([compression])
        table.extend(contents + kind + struct.pack("<I", masked_crc32c(contents + kind)))
        return handle

    index, pending = [], []
    for key, value in entries:
        pending.append((key, value))
        if len(block_contents(pending, restart_interval)) >= block_size:
            index.append((key, add_block(block_contents(pending, restart_interval))))
            pending = []
    if pending:
        index.append((pending[-1][0], add_block(block_contents(pending, restart_interval))))
    metaindex_handle = add_block(block_contents([], 1))
    index_handle = add_block(block_contents(index, 1))
    footer = (metaindex_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    Path(path).write_bytes(bytes(table) + footer)


def write_bundle(prefix, arrays, *, num_shards=1, dtypes=None, **table_options):
    """Write numpy arrays as a TF V2 checkpoint; tensor i goes to shard i % num_shards.

    ``dtypes`` overrides the DataType enum per name (e.g. uint16 bits as DT_BFLOAT16).
    """
    dtypes = dtypes or {}
    shards = [bytearray() for _ in range(num_shards)]
    entries = [(b"", header_proto(num_shards))]
    for i, name in enumerate(sorted(arrays)):
        raw = np.ascontiguousarray(arrays[name]).astype(arrays[name].dtype.newbyteorder("<")).tobytes()
        shard = shards[i % num_shards]
        dtype = dtypes.get(name, _ENUMS.get(arrays[name].dtype))
        entries.append((name.encode(), entry_proto(dtype, arrays[name].shape, i % num_shards, len(shard),
                                                   len(raw), masked_crc32c(raw))))
        shard += raw
    for k, shard in enumerate(shards):
        Path(f"{prefix}.data-{k:05d}-of-{num_shards:05d}").write_bytes(bytes(shard))
    write_table(f"{prefix}.index", entries, **table_options)
