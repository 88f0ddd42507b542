#!/usr/bin/env bash
# Prepare, HERE (a machine with PyPI access), what benchmarks/gpu_run.sh or benchmarks/memory_tiers.py needs on
# the GPU machine, which has Python 3.12 + torch but no network:
#
#   bash benchmarks/prepare_gpu_upload.sh step     # for gpu_run.sh (step benchmark): comfy-kitchen, comfy-aimdo,
#                                                  #   diffusers, importlib_metadata + ComfyUI sources
#   bash benchmarks/prepare_gpu_upload.sh memory   # for memory_tiers.py and fp8_step.py (phases memory, fp8step):
#                                                  #   comfy-kitchen (native's fp8 layers), comfy-aimdo, torchsde,
#                                                  #   trampoline + ComfyUI sources with the Qwen tokenizer; PyAV
#                                                  #   does not fit beside comfy-kitchen, so gpu_run.sh uses the
#                                                  #   stand-in benchmarks/stubs/av where `import av` fails
#
# Everything goes to .whl/ (git-ignored); carry it with the device tool (carry: [".whl"]). The upload limit is
# 64 MiB, so comfy-kitchen's ROCm library (59 MB, useless on NVIDIA) is deleted from its wheel, and only the
# ComfyUI *.py/*.json files are packed. ComfyUI comes from $COMFYUI_PATH (default ~/comfy/ComfyUI); the wheel
# versions are the ones that ComfyUI's requirements.txt pins.
set -euo pipefail
what="${1:-step}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
comfyui="${COMFYUI_PATH:-$HOME/comfy/ComfyUI}"
dest="$repo/.whl"
[ -f "$comfyui/comfy/ldm/ideogram4/model.py" ] || { echo "no ComfyUI with native Ideogram 4 at $comfyui (set COMFYUI_PATH)" >&2; exit 2; }

pin() {  # the version ComfyUI's requirements.txt pins for $1
  grep -E "^$1==" "$comfyui/requirements.txt" | head -1 | cut -d= -f3
}
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "$@"
}

rm -rf "$dest"
mkdir -p "$dest"
case "$what" in
  step)
    download "comfy-kitchen==$(pin comfy-kitchen)" "comfy-aimdo==$(pin comfy-aimdo)" diffusers==0.42.1 importlib_metadata
    ;;
  memory)
    download "comfy-kitchen==$(pin comfy-kitchen)" "comfy-aimdo==$(pin comfy-aimdo)" torchsde trampoline
    ;;
  *) echo "usage: $0 step|memory" >&2; exit 2 ;;
esac
for wheel in "$dest"/comfy_kitchen-*.whl; do
  zip -q -d "$wheel" 'comfy_kitchen/backends/hip/*.so' || true  # ROCm library only; keeps the upload under 64 MiB
done

# ComfyUI sources: Python and JSON files only (no web assets; the Qwen tokenizer files only for the memory tiers).
(cd "$comfyui" && find comfy comfy_api comfy_execution comfy_extras comfy_config app utils middleware \
    -type f \( -name '*.py' -o -name '*.json' \) 2>/dev/null; ls *.py
    # the Qwen tokenizer the pack's text encoder node reads from the host (memory tiers run the whole pipeline)
    if [ "$what" = memory ]; then find comfy/text_encoders/qwen25_tokenizer -type f; fi) \
  | tar -C "$comfyui" -czf "$dest/comfyui-src.tar.gz" -T -
(cd "$comfyui" && git rev-parse HEAD 2>/dev/null || cat comfyui_version.py) > "$dest/comfyui-version.txt"
du -ch "$dest"/* | tail -1
ls -la "$dest"
