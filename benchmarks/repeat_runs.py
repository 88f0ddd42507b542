"""Repeated runs through a real ComfyUI server: does the server process's memory grow from run to run?

Starts the host (``--comfyui``, else the one the host tests find) on CPU with tiny stand-in weights, then queues
the text-to-image workflow ``--runs`` times in a row, each with another seed and prompt (so Text Encode, the
Sampler, VAE Decode and Save run every time; the loaders' outputs stay cached, as when an artist queues again).
After each run it reads the server process's resident memory (``VmRSS`` in ``/proc/<pid>/status``) and prints the
series, the growth from the first run to the last, and the growth over the second half (after warm-up).

    python benchmarks/repeat_runs.py --comfyui ~/comfy/ComfyUI --runs 20 --json repeat_runs.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repo root importable, as the other benchmarks do
    sys.path.insert(0, str(REPO_ROOT))

from tools import hostfind  # noqa: E402
from tools.comfy_server import SINGLE_THREAD_ENV, ComfyServer, execution_error, succeeded  # noqa: E402
from tools.workflow_api import nodes_of_type, to_api_prompt  # noqa: E402

WORKFLOW = REPO_ROOT / "workflows" / "ideogram4_text_to_image.json"
SIZED_NODES = ("Ideogram4RefSampler", "Ideogram4RefScheduler", "Ideogram4RefEmptyLatent")
MIB = 1 << 20


def resident_bytes(pid: int) -> int:
    """VmRSS of a process (Linux), in bytes."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def make_prompt(object_info: dict, size: int) -> dict:
    prompt = to_api_prompt(json.loads(WORKFLOW.read_text(encoding="utf-8")), object_info)
    for node in prompt.values():
        if node["class_type"] in SIZED_NODES:
            node["inputs"]["width"] = node["inputs"]["height"] = size
    return prompt


def summarise(series: list[int]) -> dict:
    """The series in MiB and its growth: the median of the last five runs minus that of the first five (the
    allocator moves RSS up and down by tens of MiB from one run to the next, so single runs are not compared),
    and the lowest value of each half (a leak lifts the floor)."""
    def median(values):
        return sorted(values)[len(values) // 2]

    half, window = len(series) // 2, min(5, len(series))
    return {
        "rss_mib": [round(value / MIB, 1) for value in series],
        "median_growth_mib": round((median(series[-window:]) - median(series[:window])) / MIB, 1),
        "min_first_half_mib": round(min(series[:half] or series) / MIB, 1),
        "min_second_half_mib": round(min(series[half:]) / MIB, 1),
        "spread_mib": round((max(series) - min(series)) / MIB, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=pathlib.Path, default=None, help="ComfyUI folder (default: as the host "
                        "tests find it: COMFYUI_PATH, the custom_nodes folder the pack sits in, ~/comfy/ComfyUI)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--size", type=int, default=256, help="image width = height in pixels (multiple of 16)")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write the series here too")
    args = parser.parse_args(argv)

    host = args.comfyui or hostfind.find_comfyui()
    if host is None:
        print(hostfind.describe_missing_host(), file=sys.stderr)
        return 2
    python = hostfind.host_python(pathlib.Path(host))
    from tools.make_tiny_weights import write_tiny_weights

    with tempfile.TemporaryDirectory(prefix="ideogram4-repeat-") as work:
        models = pathlib.Path(work) / "models"
        write_tiny_weights(models, seed=0)
        with ComfyServer(host, python, models, work_dir=pathlib.Path(work) / "server", env=SINGLE_THREAD_ENV) as server:
            prompt = make_prompt(server.client.object_info(), args.size)
            series = []
            for run in range(args.runs):
                nodes_of_type(prompt, "Ideogram4RefSampler")[0]["inputs"]["seed"] = run
                nodes_of_type(prompt, "Ideogram4RefTextEncode")[0]["inputs"]["prompt"] = f"a red wall, number {run}"
                entry = server.client.run(prompt, timeout=600)
                if not succeeded(entry):
                    print(f"run {run + 1} failed: {execution_error(entry)}\n{server.log_tail(3000)}", file=sys.stderr)
                    return 1
                series.append(resident_bytes(server.process.pid))
                print(f"run {run + 1:2d}: server RSS {series[-1] / MIB:8.1f} MiB", flush=True)

    summary = {"host": str(host), "runs": args.runs, "size": args.size, **summarise(series)}
    print(f"median of the last 5 runs minus the first 5: {summary['median_growth_mib']:+.1f} MiB; lowest RSS of the "
          f"first / second half: {summary['min_first_half_mib']:.1f} / {summary['min_second_half_mib']:.1f} MiB; "
          f"spread {summary['spread_mib']:.1f} MiB")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
