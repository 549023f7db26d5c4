"""Tests for the TensorFlow-free checkpoint reader (plugins/tf_bundle.py).

Tests that write checkpoints with TensorFlow are skipped when it is not
installed; the rest use the small pure-Python bundle writer of
tests/tf_bundle_writer.py, which the TensorFlow tests check TensorFlow itself
can read (so it is not self-confirming).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gptkit_plugins.openai_tf import tf_bundle

from tf_bundle_writer import (DT_BFLOAT16, DT_FLOAT, DT_STRING, entry_proto, field_varint, header_proto, masked_crc32c,
                              reference_crc32c, write_bundle, write_table)

TFBundleError = tf_bundle.TFBundleError


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def sample_arrays(rng, n_extra=0):
    arrays = {
        "model/wte": rng.standard_normal((500, 32)).astype(np.float32),
        "model/h0/attn/c_attn/w": rng.standard_normal((1, 32, 96)).astype(np.float32),
        "model/ln_f/g": rng.standard_normal(32).astype(np.float32),
        "half": rng.standard_normal((3, 5)).astype(np.float16),
        "double": rng.standard_normal(4),
        "step": np.array(7, np.int64),
        "ids": np.arange(-5, 6, dtype=np.int32).reshape(1, 11),
        "empty": np.zeros((0, 3), np.float32),
        "bf16": bfloat16_bits(rng.standard_normal((2, 9))),
    }
    for i in range(n_extra):
        arrays[f"model/h{i}/mlp/c_proj/b"] = rng.standard_normal(3).astype(np.float32)
    return arrays


def expected(name: str, array: np.ndarray) -> np.ndarray:
    return (array.astype(np.uint32) << 16).view(np.float32) if name == "bf16" else array


def assert_same(actual: np.ndarray, wanted: np.ndarray, name: str = ""):
    assert actual.dtype == wanted.dtype and actual.shape == wanted.shape, name
    assert np.array_equal(actual, wanted), name


@pytest.fixture
def bundle(tmp_path):
    """A checkpoint of ``sample_arrays`` written by the test writer: (prefix, arrays)."""
    prefix = tmp_path / "model.ckpt"
    arrays = sample_arrays(np.random.default_rng(0))
    write_bundle(prefix, arrays, dtypes={"bf16": DT_BFLOAT16})
    return prefix, arrays


def error_message(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- CRC32C

@pytest.mark.parametrize("data, crc", [
    (b"", 0), (b"123456789", 0xE3069283), (bytes(32), 0x8A9136AA),  # RFC 3720 B.4 vectors and the check value
    (b"\xff" * 32, 0x62A8AB43), (bytes(range(32)), 0x46DD794E), (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_crc32c_known_values(data, crc):
    assert tf_bundle._crc32c_numpy(data) == crc
    assert tf_bundle._crc32c(data) == crc


# Lengths around the 64-, 1024- and 16384-lane stages (8 bytes per lane step) and the bytewise tail.
@pytest.mark.parametrize("length", [1, 7, 8, 9, 511, 512, 513, 4100, 8192, 8199, 131072, 3 * 131072 + 8 * 1024 + 515])
def test_crc32c_numpy_matches_reference_across_lane_sizes(length):
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    assert tf_bundle._crc32c_numpy(data) == reference_crc32c(data)
    assert tf_bundle._crc32c_numpy(bytearray(data)) == tf_bundle._crc32c(bytearray(data))


# --------------------------------------------------------------------------- reading (test writer)

def test_reads_every_tensor(bundle):
    prefix, arrays = bundle
    got = tf_bundle.read_variables(prefix)
    assert sorted(got) == sorted(arrays)
    for name, array in arrays.items():
        assert_same(got[name], expected(name, array), name)


def test_lists_dtypes_and_shapes_without_the_data_file(bundle):
    prefix, arrays = bundle
    os.remove(f"{prefix}.data-00000-of-00001")
    listed = tf_bundle.list_variables(str(prefix))
    assert listed == {name: (expected(name, a).dtype, a.shape) for name, a in arrays.items()}


def test_reads_selected_names_in_requested_order(bundle):
    prefix, arrays = bundle
    got = tf_bundle.read_variables(prefix, ["step", "model/wte"])
    assert list(got) == ["step", "model/wte"]
    assert_same(got["model/wte"], arrays["model/wte"])


def test_reads_many_blocks_and_shards(tmp_path):
    arrays = sample_arrays(np.random.default_rng(1), n_extra=300)
    write_bundle(tmp_path / "m", arrays, num_shards=3, dtypes={"bf16": DT_BFLOAT16},
                 block_size=1024, restart_interval=4)
    got = tf_bundle.read_variables(tmp_path / "m")
    for name, array in arrays.items():
        assert_same(got[name], expected(name, array), name)


def test_unsupported_dtypes_are_listed_skipped_and_refused(tmp_path):
    arrays = {"w": np.ones(3, np.float32), "graph": np.zeros(4, np.uint8), "future": np.zeros(2, np.uint8)}
    write_bundle(tmp_path / "m", arrays, dtypes={"graph": DT_STRING, "future": 99})
    listed = tf_bundle.list_variables(tmp_path / "m")
    assert listed["graph"] == ("DT_STRING", (4,)) and listed["future"] == ("DT_<99>", (2,))
    assert list(tf_bundle.read_variables(tmp_path / "m")) == ["w"]
    with pytest.raises(TFBundleError) as excinfo:
        tf_bundle.read_variables(tmp_path / "m", ["graph"])
    assert "'graph'" in error_message(excinfo) and "DT_STRING" in error_message(excinfo)


# --------------------------------------------------------------------------- errors

def test_missing_index(tmp_path):
    with pytest.raises(TFBundleError) as excinfo:
        tf_bundle.list_variables(tmp_path / "nope")
    assert f"{tmp_path / 'nope'}.index" in error_message(excinfo)


def test_missing_data_file(bundle):
    prefix, _ = bundle
    os.remove(f"{prefix}.data-00000-of-00001")
    with pytest.raises(TFBundleError) as excinfo:
        tf_bundle.read_variables(prefix)
    assert f"{prefix}.data-00000-of-00001" in error_message(excinfo) and "not found" in str(excinfo.value)


def test_unknown_tensor_name(bundle):
    with pytest.raises(TFBundleError, match="no tensor named 'model/nope'"):
        tf_bundle.read_variables(bundle[0], ["model/nope"])


def test_truncated_data_file_names_file_and_tensor(bundle):
    prefix, _ = bundle
    data = Path(f"{prefix}.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:-4])
    with pytest.raises(TFBundleError) as excinfo:
        tf_bundle.read_variables(prefix)
    message = error_message(excinfo)
    assert str(data) in message and "truncated" in message and "'step'" in message  # last tensor in the file


def test_flipped_data_byte_is_a_checksum_error_naming_the_tensor(bundle):
    prefix, _ = bundle
    data = Path(f"{prefix}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[tf_bundle._read_index(prefix)[1]["model/wte"].offset + 101] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(TFBundleError) as excinfo:
        tf_bundle.read_variables(prefix)
    message = error_message(excinfo)
    assert "checksum mismatch" in message and "'model/wte'" in message and str(data) in message
    others = [name for name in tf_bundle.list_variables(prefix) if name != "model/wte"]
    assert sorted(tf_bundle.read_variables(prefix, others)) == sorted(others)


@pytest.mark.parametrize("corrupt, match", [
    (lambda raw: raw[:-1] + bytes([raw[-1] ^ 0xFF]), "bad magic"),
    (lambda raw: raw[: len(raw) // 2], "bad magic"),
    (lambda raw: raw[:20], "shorter than a table footer"),
    (lambda raw: raw[:5] + bytes([raw[5] ^ 0x04]) + raw[6:], "checksum mismatch in block"),
    (lambda raw: b"", "shorter than a table footer"),
])
def test_corrupted_index(bundle, corrupt, match):
    index = Path(f"{bundle[0]}.index")
    index.write_bytes(corrupt(index.read_bytes()))
    with pytest.raises(TFBundleError, match=match) as excinfo:
        tf_bundle.list_variables(bundle[0])
    assert str(index) in error_message(excinfo)


@pytest.mark.parametrize("entries, options, match", [
    ([(b"", header_proto(1)), (b"w", b"\x08\x81")], {}, "bad varint"),  # unterminated dtype varint
    ([(b"", header_proto(1)), (b"w", b"\x12\x50")], {}, "runs past its entry"),  # shape longer than the entry
    ([(b"", header_proto(1))], {"compression": 1}, "Snappy"),
    ([(b"", header_proto(1))], {"compression": 7}, "compression type 7"),
    ([(b"w", entry_proto(DT_FLOAT, [], 0, 0, 4, 0))], {}, "no bundle header"),
    ([(b"", field_varint(1, 1) + field_varint(2, 1))], {}, "big-endian"),
])
def test_malformed_index_tables(tmp_path, entries, options, match):
    write_table(tmp_path / "m.index", entries, **options)
    with pytest.raises(TFBundleError, match=match) as excinfo:
        tf_bundle.list_variables(tmp_path / "m")
    assert str(tmp_path / "m.index") in error_message(excinfo)


def test_entry_size_disagreeing_with_shape(tmp_path):
    entries = [(b"", header_proto(1)), (b"w", entry_proto(DT_FLOAT, [3], 0, 0, 8, masked_crc32c(bytes(8))))]
    write_table(tmp_path / "m.index", entries)
    Path(tmp_path / "m.data-00000-of-00001").write_bytes(bytes(8))
    with pytest.raises(TFBundleError, match="'w' of shape \\[3\\]") as excinfo:
        tf_bundle.read_variables(tmp_path / "m")
    error_message(excinfo)


# --------------------------------------------------------------------------- against TensorFlow

def tf_variables(tf, prefix) -> dict:
    return {name: tuple(shape) for name, shape in tf.train.list_variables(str(prefix))}


def assert_matches_tensorflow(tf, prefix, skip=()):
    """list_variables and read_variables agree with TensorFlow's own reader for every tensor."""
    listed = tf_bundle.list_variables(prefix)
    assert {n: shape for n, (_, shape) in listed.items()} == tf_variables(tf, prefix)
    got = tf_bundle.read_variables(prefix)
    reader = tf.train.load_checkpoint(str(prefix))
    assert sorted(got) == sorted(set(listed) - set(skip))
    for name, array in got.items():
        assert_same(array, reader.get_tensor(name), name)
        assert listed[name][0] == array.dtype


def save_tf1(tf, prefix, arrays, devices=1):
    """Save variables the way OpenAI's GPT-2 checkpoints were saved (TF1 graph + Saver, V2 format)."""
    with tf.Graph().as_default():
        for i, (name, value) in enumerate(arrays.items()):
            with tf.device(f"/cpu:{i % devices}"):
                tf.compat.v1.get_variable(name, initializer=value)
        saver = tf.compat.v1.train.Saver(sharded=devices > 1)
        config = tf.compat.v1.ConfigProto(device_count={"CPU": devices})
        with tf.compat.v1.Session(config=config) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return saver.save(session, str(prefix))


def gpt2_like(rng, n_layer=12, d=32, vocab=20000):
    arrays = {"model/wte": rng.standard_normal((vocab, d)).astype(np.float32),  # 2.5 MB
              "model/wpe": rng.standard_normal((64, d)).astype(np.float32)}
    shapes = {"ln_1/g": [d], "ln_1/b": [d], "attn/c_attn/w": [1, d, 3 * d], "attn/c_attn/b": [3 * d],
              "attn/c_proj/w": [1, d, d], "attn/c_proj/b": [d], "ln_2/g": [d], "ln_2/b": [d],
              "mlp/c_fc/w": [1, d, 4 * d], "mlp/c_fc/b": [4 * d],
              "mlp/c_proj/w": [1, 4 * d, d], "mlp/c_proj/b": [d]}
    for layer in range(n_layer):
        for suffix, shape in shapes.items():
            arrays[f"model/h{layer}/{suffix}"] = rng.standard_normal(shape).astype(np.float32)
    arrays["model/ln_f/g"] = rng.standard_normal(d).astype(np.float32)
    arrays["model/ln_f/b"] = rng.standard_normal(d).astype(np.float32)
    arrays["extra/half"] = rng.standard_normal((3, 7)).astype(np.float16)
    arrays["extra/ids"] = rng.integers(-1000, 1000, (5, 2)).astype(np.int32)
    return arrays


def test_reads_tf1_saver_checkpoint_like_gpt2(tf, tmp_path):
    arrays = gpt2_like(np.random.default_rng(0))
    prefix = save_tf1(tf, tmp_path / "model.ckpt", arrays)
    assert_matches_tensorflow(tf, prefix)
    got = tf_bundle.read_variables(prefix, ["model/h3/attn/c_attn/w", "extra/half"])
    assert_same(got["model/h3/attn/c_attn/w"], arrays["model/h3/attn/c_attn/w"])
    assert_same(got["extra/half"], arrays["extra/half"])


def test_reads_tf1_sharded_checkpoint(tf, tmp_path):
    arrays = gpt2_like(np.random.default_rng(1), n_layer=2, vocab=100)
    prefix = save_tf1(tf, tmp_path / "model.ckpt", arrays, devices=2)
    assert Path(f"{prefix}.data-00001-of-00002").exists()
    assert_matches_tensorflow(tf, prefix)


def test_reads_index_spanning_several_blocks(tf, tmp_path):
    names = [f"model/h{i:04d}/" + "x" * 60 for i in range(5000)]
    values = [np.full(2, i, np.float32) for i in range(len(names))]
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "m"), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=values)
    assert os.path.getsize(tmp_path / "m.index") > 2 * 262144 * 0.75  # TF's table blocks hold ~256 KiB
    assert_matches_tensorflow(tf, tmp_path / "m")


def test_reads_tf2_checkpoint_skipping_its_object_graph(tf, tmp_path):
    rng = np.random.default_rng(2)
    checkpoint = tf.train.Checkpoint(w=tf.Variable(rng.standard_normal((4, 6)).astype(np.float32)),
                                     step=tf.Variable(np.int64(3)))
    prefix = checkpoint.write(str(tmp_path / "tf2"))
    assert tf_bundle.list_variables(prefix)["_CHECKPOINTABLE_OBJECT_GRAPH"] == ("DT_STRING", ())
    assert_matches_tensorflow(tf, prefix, skip=["_CHECKPOINTABLE_OBJECT_GRAPH"])


def test_partitioned_tensors_are_listed_but_not_read(tf, tmp_path):
    rng = np.random.default_rng(3)
    checkpoint = tf.train.Checkpoint(**{k: tf.Variable(rng.standard_normal((100, 300)).astype(np.float32))
                                        for k in "abc"})
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=150_000)  # slices tensors across shards
    options = tf.train.CheckpointOptions(experimental_sharding_callback=policy)
    prefix = checkpoint.write(str(tmp_path / "tf2"), options)
    listed = tf_bundle.list_variables(prefix)
    assert {n: shape for n, (_, shape) in listed.items()} == tf_variables(tf, prefix)
    reader, outcomes = tf.train.load_checkpoint(prefix), set()
    for name in listed:
        if listed[name][0] == "DT_STRING":
            continue
        try:
            assert_same(tf_bundle.read_variables(prefix, [name])[name], reader.get_tensor(name), name)
            outcomes.add("read")
        except TFBundleError as error:
            assert "partitioned" in str(error)
            outcomes.add("partitioned")
    assert outcomes == {"read", "partitioned"}


def test_tensorflow_reads_what_the_test_writer_writes(tf, tmp_path):
    arrays = sample_arrays(np.random.default_rng(4), n_extra=200)
    write_bundle(tmp_path / "m", arrays, num_shards=2, dtypes={"bf16": DT_BFLOAT16}, block_size=1024)
    reader = tf.train.load_checkpoint(str(tmp_path / "m"))
    assert tf_variables(tf, tmp_path / "m") == {n: a.shape for n, a in arrays.items()}
    for name, array in arrays.items():
        tensor = reader.get_tensor(name)
        assert_same(tensor.astype(np.float32) if name == "bf16" else tensor, expected(name, array), name)
