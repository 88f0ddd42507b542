"""The model files the loaders list: ComfyUI's folders (``diffusion_models``, which includes ``unet``;
``text_encoders``) with their usual extensions, plus the ``.gguf`` files in the same folders.

``.gguf`` is not added to ComfyUI's own folder entries (native loaders would then list files they cannot read);
the GGUF files are listed through a second ``folder_paths`` entry over the same folders, under the names
ComfyUI-GGUF uses (``unet_gguf``, ``clip_gguf``), so both packs share it. Its folders are re-synchronised with the
base entry at every listing, so folders added later (extra_model_paths.yaml, ``--base-directory``) are seen.
"""

from __future__ import annotations

import folder_paths

GGUF_EXTENSION = ".gguf"
_GGUF_FOLDERS = {"diffusion_models": "unet_gguf", "text_encoders": "clip_gguf"}


def _gguf_folder(base: str) -> str:
    key = _GGUF_FOLDERS[base]
    paths, extensions = folder_paths.folder_names_and_paths.get(key, ([], set()))
    paths = list(paths) + [path for path in folder_paths.get_folder_paths(base) if path not in paths]
    folder_paths.folder_names_and_paths[key] = (paths, set(extensions) | {GGUF_EXTENSION})
    return key


def model_file_list(base: str) -> list[str]:
    """Every file the loader of ``base`` ("diffusion_models" or "text_encoders") offers, sorted."""
    gguf_files = [name for name in folder_paths.get_filename_list(_gguf_folder(base))
                  if name.lower().endswith(GGUF_EXTENSION)]
    return sorted(set(folder_paths.get_filename_list(base)) | set(gguf_files))


def model_file_path(base: str, name: str) -> str:
    """The full path of a listed file; raises ComfyUI's FileNotFoundError naming it when it is gone."""
    if name.lower().endswith(GGUF_EXTENSION):
        path = folder_paths.get_full_path(_gguf_folder(base), name)
        if path is not None:
            return path
    return folder_paths.get_full_path_or_raise(base, name)
