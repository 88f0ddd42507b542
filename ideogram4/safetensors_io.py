"""Reading safetensors checkpoints (one file, a sharded index, or a folder) with clear errors.

Shared by the DiT, VAE and text-encoder loaders. Only safetensors is ever read: pickle-based files
(``.ckpt``, ``.pt``, ``.pth``, ``.bin``, ...) are refused by name, never opened.

Every file's header is parsed and checked against the file size *before* any tensor is read, so a
truncated download fails with a message naming the file instead of a low-level error halfway through.

Paths accepted everywhere here:

* a ``.safetensors`` (or ``.sft``) file;
* a ``*.safetensors.index.json`` shard index (shards are resolved relative to the index's folder);
* one shard of an indexed checkpoint (the index beside it is found and used);
* a folder holding exactly one index, or else exactly one safetensors file.

Header dtype names are the safetensors ones (``"BF16"``, ``"F32"``, ``"F8_E4M3"``, ``"U8"``, ...);
:data:`SAFETENSORS_DTYPES` maps them to torch dtypes.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import struct
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from safetensors import SafetensorError, safe_open

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
INDEX_SUFFIX = ".safetensors.index.json"
# Pickle-based formats can execute code when loaded; they are refused by name and never opened.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
# The safetensors format itself caps the JSON header at 100 MB; anything larger is not a header.
MAX_HEADER_BYTES = 100_000_000

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
# Bytes per element, used to check each tensor's byte range against its shape. Dtypes not listed
# (newer safetensors additions) skip that one check and are left to safetensors itself.
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}
_SHARD_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.safetensors$")

HeaderEntries = dict[str, tuple[str, list[int]]]


class CheckpointError(ValueError):
    """Every loading error of the pack: names the file, what was found, what was expected, what to do."""


@dataclass(frozen=True)
class SafetensorsSource:
    """Where a checkpoint's tensors live once ``path`` is resolved.

    ``files`` in a stable order; ``key_to_file`` maps every tensor key to the file holding it
    (validated against each file's header); ``index`` is the shard index, if any.
    """

    path: pathlib.Path
    files: tuple[pathlib.Path, ...]
    index: pathlib.Path | None
    entries: HeaderEntries
    metadata: dict[str, str]
    key_to_file: dict[str, pathlib.Path]

    @property
    def sharded(self) -> bool:
        return self.index is not None


# --------------------------------------------------------------------------------------------------
# Path resolution
# --------------------------------------------------------------------------------------------------


def _refuse_pickle(path: pathlib.Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: this is a pickle-based checkpoint ({path.suffix}); this pack only reads .safetensors files "
            "because pickles can run arbitrary code when loaded. Use the .safetensors release of the model, or "
            "convert the file to safetensors with a trusted tool first."
        )


def _resolve_folder(folder: pathlib.Path) -> pathlib.Path:
    indexes = sorted(folder.glob("*" + INDEX_SUFFIX))
    if len(indexes) == 1:
        return indexes[0]
    if len(indexes) > 1:
        names = ", ".join(p.name for p in indexes)
        raise CheckpointError(
            f"{folder}: the folder holds several shard indexes ({names}); pass the path of the one to load."
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SAFETENSORS_SUFFIXES)
    if len(files) == 1:
        return files[0]
    if len(files) > 1:
        names = ", ".join(p.name for p in files[:8])
        raise CheckpointError(
            f"{folder}: the folder holds {len(files)} .safetensors files ({names}) but no "
            f"*{INDEX_SUFFIX} tying them together; pass the path of the file to load."
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    found = f"only pickle-based files ({', '.join(pickles[:5])}), which are never loaded" if pickles else "no weights"
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir())
    hint = f" Sub-folders: {', '.join(subfolders[:8])} — pass one of them." if subfolders else ""
    raise CheckpointError(
        f"{folder}: found {found}; expected a .safetensors file or a *{INDEX_SUFFIX} shard index in this folder.{hint}"
    )


def _index_for_shard(shard: pathlib.Path) -> pathlib.Path | None:
    """The index beside ``shard`` whose weight map names it, if any."""
    for candidate in sorted(shard.parent.glob("*" + INDEX_SUFFIX)):
        try:
            weight_map = json.loads(candidate.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(weight_map, dict) and shard.name in set(weight_map.values()):
            return candidate
    return None


def resolve_checkpoint_path(path: str | pathlib.Path) -> pathlib.Path:
    """The single file or index that ``path`` stands for (see the module docstring). Raises CheckpointError."""
    path = pathlib.Path(path).expanduser()
    _refuse_pickle(path)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such file or folder. Expected a .safetensors file, a *{INDEX_SUFFIX} shard index or a "
            "folder holding one; check the path (and that the download finished)."
        )
    if path.is_dir():
        return _resolve_folder(path)
    if path.name.endswith(INDEX_SUFFIX):
        return path
    shard_match = _SHARD_NAME.search(path.name)
    if shard_match:
        index = _index_for_shard(path)
        if index is not None:
            return index
        if shard_match.group(2) != "00001":
            raise CheckpointError(
                f"{path}: this is shard {int(shard_match.group(1))} of {int(shard_match.group(2))} of a sharded "
                f"checkpoint, but no *{INDEX_SUFFIX} beside it lists it. Put the index file next to the shards "
                "(or pass the folder)."
            )
    return path


# --------------------------------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------------------------------


def _not_safetensors(path: pathlib.Path, why: str) -> CheckpointError:
    if path.suffix.lower() == ".gguf":
        why += "; it is named .gguf but does not start with the GGUF magic bytes either, so it is damaged"
    return CheckpointError(
        f"{path}: not a readable safetensors file ({why}). Expected a .safetensors file; re-download it or pick "
        "another file."
    )


def _read_file_header(path: pathlib.Path) -> tuple[HeaderEntries, dict[str, str]]:
    """Parse one file's header and check every tensor's byte range against the file size."""
    _refuse_pickle(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _not_safetensors(path, f"the file is only {file_size} bytes long")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise _not_safetensors(path, f"the first 8 bytes announce a {header_len}-byte header")
            if 8 + header_len > file_size:
                raise CheckpointError(
                    f"{path}: the file is truncated: its header alone needs {8 + header_len} bytes but the file has "
                    f"{file_size}. Re-download the file."
                )
            raw = handle.read(header_len)
    except FileNotFoundError as error:
        raise CheckpointError(f"{path}: no such file ({error}); check the path.") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read the file ({error}).") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise _not_safetensors(path, f"the header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise _not_safetensors(path, "the header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _not_safetensors(path, "__metadata__ is not a JSON object")
    data_size = file_size - 8 - header_len
    entries: HeaderEntries = {}
    for key, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise _not_safetensors(path, f"malformed header entry for {key!r}") from None
        if end > data_size:
            raise CheckpointError(
                f"{path}: the file is truncated: tensor {key!r} needs data up to byte {8 + header_len + end} but "
                f"the file has {file_size} bytes. Re-download the file."
            )
        itemsize = _DTYPE_BYTES.get(dtype)
        if itemsize is not None and end - begin != math.prod(shape) * itemsize:
            raise _not_safetensors(
                path, f"tensor {key!r} ({dtype}, shape {shape}) covers {end - begin} bytes instead of "
                f"{math.prod(shape) * itemsize}"
            )
        entries[key] = (dtype, shape)
    return entries, {str(k): str(v) for k, v in metadata.items()}


def _read_index(index: pathlib.Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except FileNotFoundError:
        raise CheckpointError(f"{index}: no such shard index; check the path.") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{index}: not a readable shard index ({type(error).__name__}: {error}); expected JSON with a "
            '"weight_map" object mapping tensor names to shard file names.'
        ) from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: the shard index has an empty or malformed \"weight_map\".")
    return weight_map


def open_source(path: str | pathlib.Path) -> SafetensorsSource:
    """Resolve ``path`` and read every header it involves (no tensor data). Raises CheckpointError."""
    requested = pathlib.Path(path).expanduser()
    resolved = resolve_checkpoint_path(requested)
    if not resolved.name.endswith(INDEX_SUFFIX):
        entries, metadata = _read_file_header(resolved)
        return SafetensorsSource(
            path=requested,
            files=(resolved,),
            index=None,
            entries=entries,
            metadata=metadata,
            key_to_file={key: resolved for key in entries},
        )

    weight_map = _read_index(resolved)
    shard_names = sorted(set(weight_map.values()))
    entries: HeaderEntries = {}
    metadata: dict[str, str] = {}
    key_to_file: dict[str, pathlib.Path] = {}
    files = []
    for shard_name in shard_names:
        shard = resolved.parent / shard_name
        if not shard.is_file():
            raise CheckpointError(
                f"{resolved}: the shard index lists {shard_name}, but {shard} does not exist. Download every shard "
                "into the index's folder."
            )
        shard_entries, shard_metadata = _read_file_header(shard)
        for key, entry in shard_entries.items():
            if key in key_to_file:
                raise CheckpointError(
                    f"{resolved}: tensor {key!r} appears in both {key_to_file[key].name} and {shard_name}."
                )
            entries[key] = entry
            key_to_file[key] = shard
        for meta_key, value in shard_metadata.items():
            metadata.setdefault(meta_key, value)
        files.append(shard)
    for key, shard_name in weight_map.items():
        if key_to_file.get(key, resolved).name != shard_name:
            raise CheckpointError(
                f"{resolved}: the index places {key!r} in {shard_name}, but that shard has no such tensor. The "
                "shards do not match this index; re-download them."
            )
    return SafetensorsSource(
        path=requested,
        files=tuple(files),
        index=resolved,
        entries=entries,
        metadata=metadata,
        key_to_file=key_to_file,
    )


def read_safetensors_header(path: str | pathlib.Path) -> tuple[HeaderEntries, dict[str, str]]:
    """``key -> (safetensors dtype name, shape)`` and the merged ``__metadata__``, without reading tensor data.

    For a sharded checkpoint the shards' metadata are merged (first shard wins on a clash).
    """
    source = open_source(path)
    return dict(source.entries), dict(source.metadata)


# --------------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------------


def iter_tensors(source: SafetensorsSource, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, tensor)`` for ``keys`` one at a time (CPU), so a caller can convert and drop each.

    Files are memory-mapped by safetensors; each tensor is copied out when yielded.
    """
    keys = list(keys)
    for key in keys:
        if key not in source.key_to_file:
            raise CheckpointError(f"{source.path}: no tensor named {key!r} in the checkpoint.")
    with ExitStack() as stack:
        handles = {}
        for key in keys:
            file = source.key_to_file[key]
            try:
                if file not in handles:
                    handles[file] = stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
                tensor = handles[file].get_tensor(key)
            except (SafetensorError, OSError, RuntimeError) as error:
                raise CheckpointError(
                    f"{file}: reading tensor {key!r} failed ({error}). The file may be damaged; re-download it."
                ) from None
            yield key, tensor


def read_safetensors(
    path: str | pathlib.Path, key_filter: Callable[[str], bool] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (only keys passing ``key_filter`` are materialised) and the merged metadata.

    Shards holding no wanted key are never opened, so e.g. a text-encoder loader can skip a vision
    tower's tensors (and shards) entirely.
    """
    source = open_source(path)
    wanted = [key for key in source.entries if key_filter is None or key_filter(key)]
    return dict(iter_tensors(source, wanted)), dict(source.metadata)


def find_config_json(path: str | pathlib.Path) -> dict | None:
    """The parsed ``config.json`` beside a checkpoint file / index (or inside a folder), else None.

    A config.json that exists but is not a JSON object raises CheckpointError naming it.
    """
    path = pathlib.Path(path).expanduser()
    folder = path if path.is_dir() else path.parent
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(
            f"{config_path}: cannot parse this config.json ({error}); fix or remove it (the model dimensions can "
            "also be read from the weights)."
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object, found {type(config).__name__}.")
    return config
