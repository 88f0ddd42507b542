"""Progress and interruption of the pack sampler on a real ComfyUI server, observed over its websocket.

The server runs with ``--preview-method latent2rgb``: newer hosts throttle plain progress updates to one per
100 ms but always send an update that carries a preview, so with previews on every step reaches the client.
"""

import pytest

from host_session import run_ok, serve, the_node, workflow_prompt
from tools.comfy_server import execution_error

pytestmark = pytest.mark.host

WORKFLOW = "ideogram4_text_to_image.json"
FINISHED = {"execution_success", "execution_error", "execution_interrupted"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "progress", extra_args=["--preview-method", "latent2rgb"])


def _events_until_finished(ws, prompt_id, timeout_s=300.0, on_event=None):
    """Every event of ``prompt_id`` up to and including the one that ends it."""
    events = []
    while True:
        event = ws.recv_event(timeout_s)
        assert event is not None, f"no websocket event for {timeout_s} s; events so far: {[e['type'] for e in events]}"
        data = event.get("data") or {}
        if data.get("prompt_id") not in (None, prompt_id):
            continue
        events.append(event)
        if on_event is not None:
            on_event(event)
        if event["type"] in FINISHED and data.get("prompt_id") == prompt_id:
            return events


def _sampler_progress(events, sampler_id):
    return [e["data"] for e in events if e["type"] == "progress" and str(e["data"].get("node")) == sampler_id]


@pytest.mark.parametrize("steps", [20, 7])
def test_progress_bar_reports_every_step(server, steps):
    prompt = workflow_prompt(server, WORKFLOW)
    sampler_inputs = the_node(prompt, "Ideogram4RefSampler")["inputs"]
    if steps != 20:
        sampler_inputs.update(preset="Custom", steps=steps, guidance_schedule=f"7x{steps - 1},3")
    sampler_inputs["seed"] = 1000 + steps  # a new seed: the sampler must really run, not come from the cache
    sampler_id = next(key for key, node in prompt.items() if node["class_type"] == "Ideogram4RefSampler")
    ws = server.client.open_websocket()
    try:
        prompt_id = server.client.queue_prompt(prompt)
        events = _events_until_finished(ws, prompt_id)
    finally:
        ws.close()
    assert events[-1]["type"] == "execution_success", events[-1]
    progress = _sampler_progress(events, sampler_id)
    assert [p["value"] for p in progress] == list(range(1, steps + 1)), (
        "progress must reach the client for every step; newer hosts drop plain updates sent <100 ms apart, "
        "so the sampler has to attach a latent preview to each update")
    assert {p["max"] for p in progress} == {steps}


def test_interrupt_stops_within_a_step_and_the_next_run_succeeds(server):
    # Many steps at a larger size, so the run is still going when the interrupt arrives.
    steps = 400
    prompt = workflow_prompt(server, WORKFLOW, width=512, height=512)
    sampler_inputs = the_node(prompt, "Ideogram4RefSampler")["inputs"]
    sampler_inputs.update(preset="Custom", steps=steps, guidance_schedule="7", seed=7)
    sampler_id = next(key for key, node in prompt.items() if node["class_type"] == "Ideogram4RefSampler")
    interrupted_at = []

    def interrupt_after_two_steps(event):
        data = event.get("data") or {}
        if (not interrupted_at and event["type"] == "progress" and str(data.get("node")) == sampler_id
                and data["value"] >= 2):
            interrupted_at.append(data["value"])
            server.client.interrupt()

    ws = server.client.open_websocket()
    try:
        prompt_id = server.client.queue_prompt(prompt)
        events = _events_until_finished(ws, prompt_id, on_event=interrupt_after_two_steps)
    finally:
        ws.close()
    assert interrupted_at, "the sampler sent no progress before finishing"
    assert events[-1]["type"] == "execution_interrupted", [e["type"] for e in events[-5:]]
    assert str(events[-1]["data"].get("node_id")) == sampler_id
    last_step = max(p["value"] for p in _sampler_progress(events, sampler_id))
    # The step running when the interrupt arrived may finish (and one more may already have been reported
    # while the interrupt request was in flight); the loop must not go on beyond that.
    assert last_step <= interrupted_at[0] + 2, f"interrupted at step {interrupted_at[0]}, ran to {last_step} of {steps}"
    entry = server.client.wait_for_history(prompt_id)  # written just after the websocket event
    assert entry["status"]["status_str"] == "error"
    assert execution_error(entry) is None  # an interruption, not a failure

    _, images = run_ok(server, workflow_prompt(server, WORKFLOW))
    assert len(images) == 1
