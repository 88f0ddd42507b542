"""Reading GGUF files with the ``gguf`` package (the format's own reader; the file is memory-mapped).

:func:`open_gguf` reads the header (metadata and tensor table) and returns a :class:`GGUFSource` whose ``entries``
look like a safetensors header: ``key -> (dtype name, logical shape)`` with the GGML type name as dtype (``"F32"``,
``"Q4_K"``, ...) and the shape in PyTorch order (GGUF lists dims innermost first). :func:`iter_gguf_tensors`
yields each tensor copied out of the memory map: F32/F16/BF16 tensors as float tensors of their logical shape,
block-quantised ones as their raw bytes, uint8 ``(rows, bytes per row)``, for :func:`ideogram4.gguf_dequant.
dequantize_gguf`.

A ``rename`` function given to :func:`open_gguf` maps the file's tensor names onto the names a loader expects (the
text encoder maps llama.cpp names to Hugging Face ones); tensors it maps to None are left out.
"""

from __future__ import annotations

import math
import pathlib
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from .gguf_dequant import GGUF_QTYPE_NAMES, SUPPORTED_GGUF_QTYPES, dequantize_gguf
from .safetensors_io import CheckpointError

GGUF_MAGIC = b"GGUF"
# GGML types that hold plain values (read as float tensors); every other supported type is block-quantised.
PLAIN_GGUF_TYPES = ("F32", "F16", "BF16")
GGUF_BLOCK_TYPES = tuple(name for name in GGUF_QTYPE_NAMES.values() if name not in PLAIN_GGUF_TYPES)
_INSTALL_HINT = "install the pack's requirements (pip install gguf) into ComfyUI's Python"


def is_gguf_file(path: str | pathlib.Path) -> bool:
    """True when the file starts with the GGUF magic bytes (content, not name)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file's header: ``entries`` (key -> (GGML type name, shape)), ``metadata`` (scalar fields as strings)
    and, per key, the file's own tensor name and GGML type number."""

    path: pathlib.Path
    entries: dict[str, tuple[str, list[int]]]
    metadata: dict[str, str]
    file_names: dict[str, str]
    qtypes: dict[str, int]
    reader: object

    files: tuple = ()
    index = None
    sharded = False
    key_to_file: dict = None

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return str(value) if value is not None else None


def _import_gguf(path):
    try:
        import gguf
    except ImportError:
        raise CheckpointError(f"{path}: reading GGUF files needs the gguf package; {_INSTALL_HINT}.") from None
    return gguf


def _field_value(field):
    """A scalar or string metadata field's value; None for arrays (token lists etc., not needed here)."""
    import gguf

    if not field.types or field.types[0] == gguf.GGUFValueType.ARRAY:
        return None
    part = field.parts[field.data[0]]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    return part.tolist()[0] if hasattr(part, "tolist") else part


def open_gguf(path: str | pathlib.Path, rename: Callable[[str], str | None] | None = None) -> GGUFSource:
    """Read a GGUF file's header (memory-mapped; no tensor data is touched). Raises CheckpointError naming the
    file for a file that is not GGUF, is truncated, or holds a tensor type the pack does not de-quantise."""
    path = pathlib.Path(path).expanduser()
    gguf = _import_gguf(path)
    if not is_gguf_file(path):
        raise CheckpointError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes).")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except (ValueError, OSError, IndexError, KeyError) as error:
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(error).__name__}: {error}); the file is "
                              "truncated or damaged; re-download it.") from None
    # Strings, as a safetensors header's metadata (arrays such as the tokenizer's vocabulary are left out).
    metadata = {name: str(value) for name, field in reader.fields.items()
                if (value := _field_value(field)) is not None}
    entries, file_names, qtypes = {}, {}, {}
    unsupported = {}
    for tensor in reader.tensors:
        key = tensor.name if rename is None else rename(tensor.name)
        if key is None:
            continue
        qtype = int(tensor.tensor_type)
        if qtype not in SUPPORTED_GGUF_QTYPES:
            unsupported.setdefault(getattr(tensor.tensor_type, "name", f"type {qtype}"), tensor.name)
            continue
        entries[key] = (GGUF_QTYPE_NAMES[qtype], [int(d) for d in reversed(tensor.shape.tolist())])
        file_names[key] = tensor.name
        qtypes[key] = qtype
    if unsupported:
        found = ", ".join(f"{name} (e.g. {example})" for name, example in sorted(unsupported.items()))
        supported = ", ".join(sorted(GGUF_QTYPE_NAMES.values()))
        raise CheckpointError(
            f"{path}: holds GGUF tensor types the pack does not read: {found}. Supported types: {supported}. Use a "
            "file quantised to one of them (e.g. Q8_0, Q6_K, Q5_K_M/Q5_0, Q4_K_M/Q4_0).")
    return GGUFSource(path=path, entries=entries, metadata=metadata, file_names=file_names, qtypes=qtypes,
                      reader=reader, files=(path,), key_to_file={key: path for key in entries})


def _raw_bytes(tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the memory map is read-only; the bytes are copied out
        return torch.from_numpy(tensor.data).view(torch.uint8).clone()


def iter_gguf_tensors(source: GGUFSource, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, tensor)`` for ``keys`` one at a time, copied out of the memory map: plain types as float
    tensors of the logical shape (F32 float32, F16 float16, BF16 bfloat16), block types as uint8 ``(rows, bytes
    per row)``."""
    by_name = {tensor.name: tensor for tensor in source.reader.tensors}
    for key in keys:
        if key not in source.entries:
            raise CheckpointError(f"{source.path}: no tensor named {key!r} in the GGUF file.")
        name, shape = source.entries[key]
        tensor = by_name[source.file_names[key]]
        try:
            raw = _raw_bytes(tensor)
        except (ValueError, OSError, RuntimeError) as error:
            raise CheckpointError(f"{source.path}: reading tensor {tensor.name!r} failed ({error}). The file may be "
                                  "damaged; re-download it.") from None
        if name in PLAIN_GGUF_TYPES:
            plain = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[name]
            yield key, dequantize_gguf(raw, source.qtypes[key], tuple(shape), plain)
        else:
            rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
            yield key, raw.reshape(rows, -1)
