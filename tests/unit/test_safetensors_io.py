"""safetensors_io: single files, shard indexes, folders, key filtering and the error cases.

Every file is written by the test with safetensors.torch.save_file.
"""

import json

import pytest
import torch
from safetensors.torch import save_file

from ideogram4 import safetensors_io
from ideogram4.safetensors_io import (
    CheckpointError,
    find_config_json,
    read_safetensors,
    read_safetensors_header,
)


def _tensors():
    return {
        "language_model.embed.weight": torch.randn(6, 4, dtype=torch.bfloat16),
        "language_model.layer.weight": torch.randn(4, 4).to(torch.float8_e4m3fn),
        "language_model.layer.weight_scale": torch.rand(4),
        "visual.patch.weight": torch.randn(3, 2, 2),
        "visual.blocks.0.bias": torch.arange(5, dtype=torch.int64),
    }


def _assert_same(actual: dict, expected: dict):
    assert list(sorted(actual)) == list(sorted(expected))
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key].view(torch.uint8), tensor.view(torch.uint8)), key


def _write_sharded(folder, tensors, metadata=None, name="model"):
    """Two shards plus a HF-style index; returns the index path."""
    keys = sorted(tensors)
    shards = {f"{name}-00001-of-00002.safetensors": keys[::2], f"{name}-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for shard, shard_keys in shards.items():
        save_file({k: tensors[k] for k in shard_keys}, str(folder / shard), metadata=metadata)
        weight_map.update({k: shard for k in shard_keys})
    index = folder / f"{name}.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def test_single_file_round_trip_with_metadata(tmp_path):
    tensors = _tensors()
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"config": '{"a": 1}'})
    loaded, metadata = read_safetensors(path)
    _assert_same(loaded, tensors)
    assert metadata == {"config": '{"a": 1}'}


def test_header_gives_dtype_names_and_shapes_without_reading_tensors(tmp_path, monkeypatch):
    tensors = _tensors()
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})

    def no_tensor_reads(*args, **kwargs):
        raise AssertionError("the header must be read without opening tensors")

    monkeypatch.setattr(safetensors_io, "safe_open", no_tensor_reads)
    entries, metadata = read_safetensors_header(path)
    assert entries == {
        "language_model.embed.weight": ("BF16", [6, 4]),
        "language_model.layer.weight": ("F8_E4M3", [4, 4]),
        "language_model.layer.weight_scale": ("F32", [4]),
        "visual.patch.weight": ("F32", [3, 2, 2]),
        "visual.blocks.0.bias": ("I64", [5]),
    }
    assert metadata == {"k": "v"}


def test_key_filter_never_materialises_filtered_tensors(tmp_path, monkeypatch):
    tensors = _tensors()
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    read_keys = []
    real_safe_open = safetensors_io.safe_open

    class RecordingHandle:
        def __init__(self, *args, **kwargs):
            self._inner = real_safe_open(*args, **kwargs)

        def __enter__(self):
            self._inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self._inner.__exit__(*exc)

        def get_tensor(self, key):
            read_keys.append(key)
            return self._inner.get_tensor(key)

    monkeypatch.setattr(safetensors_io, "safe_open", RecordingHandle)
    loaded, _ = read_safetensors(path, key_filter=lambda key: not key.startswith("visual."))
    expected = {k: v for k, v in tensors.items() if not k.startswith("visual.")}
    _assert_same(loaded, expected)
    assert sorted(read_keys) == sorted(expected)


def test_sharded_index_shard_and_folder_all_load_the_same(tmp_path):
    tensors = _tensors()
    index = _write_sharded(tmp_path, tensors, metadata={"format": "pt"})
    for path in (index, tmp_path, tmp_path / "model-00002-of-00002.safetensors"):
        loaded, metadata = read_safetensors(path)
        _assert_same(loaded, tensors)
        assert metadata == {"format": "pt"}
    entries, _ = read_safetensors_header(tmp_path)
    assert set(entries) == set(tensors)


def test_key_filter_skips_shards_without_wanted_keys(tmp_path, monkeypatch):
    tensors = _tensors()
    vision = {k: v for k, v in tensors.items() if k.startswith("visual.")}
    language = {k: v for k, v in tensors.items() if not k.startswith("visual.")}
    save_file(language, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(vision, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in language}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in vision})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    opened = []
    real_safe_open = safetensors_io.safe_open

    def recording_safe_open(path, *args, **kwargs):
        opened.append(path)
        return real_safe_open(path, *args, **kwargs)

    monkeypatch.setattr(safetensors_io, "safe_open", recording_safe_open)
    loaded, _ = read_safetensors(tmp_path, key_filter=lambda key: not key.startswith("visual."))
    _assert_same(loaded, language)
    assert [p.rsplit("/", 1)[-1] for p in opened] == ["model-00001-of-00002.safetensors"]


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere" / "dit.safetensors"
    with pytest.raises(CheckpointError, match="no such file") as info:
        read_safetensors(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", [1, 100, "into_header"])
def test_truncated_file_is_named_before_reading(tmp_path, cut):
    path = tmp_path / "dit.safetensors"
    save_file({"a": torch.randn(64, 64), "b": torch.randn(32)}, str(path))
    data = path.read_bytes()
    keep = 20 if cut == "into_header" else len(data) - cut
    path.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match="truncated") as info:
        read_safetensors(path)
    assert str(path) in str(info.value) and "Re-download" in str(info.value)
    with pytest.raises(CheckpointError, match="truncated"):
        read_safetensors_header(path)


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("this is plain text, not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as info:
        read_safetensors(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_files_are_refused_without_opening(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"model{suffix}"
    torch.save({"a": torch.zeros(1)}, path)

    def no_open(*args, **kwargs):
        raise AssertionError("a pickle file must never be opened")

    monkeypatch.setattr("builtins.open", no_open)
    with pytest.raises(CheckpointError, match="pickle") as info:
        read_safetensors(path)
    assert str(path) in str(info.value) and ".safetensors" in str(info.value)


def test_folder_with_only_pickles_is_refused(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only pickle-based files"):
        read_safetensors(tmp_path)


def test_index_naming_a_missing_shard(tmp_path):
    index = _write_sharded(tmp_path, _tensors())
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors") as info:
        read_safetensors(index)
    assert str(index) in str(info.value)


def test_index_disagreeing_with_shards(tmp_path):
    index = _write_sharded(tmp_path, _tensors())
    data = json.loads(index.read_text())
    data["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="ghost.weight"):
        read_safetensors(index)


def test_shard_without_index_is_refused(tmp_path):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "model-00001-of-00003.safetensors"))
    with pytest.raises(CheckpointError, match="shard 1 of 3"):
        read_safetensors(tmp_path / "model-00001-of-00003.safetensors")


def test_folder_with_several_files_and_no_index_is_ambiguous(tmp_path):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "one.safetensors"))
    save_file({"a": torch.zeros(2)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(CheckpointError, match="one.safetensors, two.safetensors"):
        read_safetensors(tmp_path)


def test_find_config_json(tmp_path):
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    assert find_config_json(path) is None
    (tmp_path / "config.json").write_text(json.dumps({"num_layers": 3}))
    assert find_config_json(path) == {"num_layers": 3}
    assert find_config_json(tmp_path) == {"num_layers": 3}
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        find_config_json(path)
