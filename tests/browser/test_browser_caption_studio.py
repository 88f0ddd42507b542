"""The pack in the real ComfyUI frontend: the extension loads once without errors, example workflows are laid out
without overlaps, preset widgets hide and show, and the caption studio writes the caption the server runs.

One server (tiny stand-in weights) and one browser page for the module; the tests run in file order and the
studio test builds on the page state of the ones before it only through the workflows it loads itself.
"""

import json
import os
import pathlib
import time

import pytest

from host_session import WORKFLOW_NAMES, load_workflow, serve
from ideogram4.caption_studio import caption_of_state
from tools.comfy_server import succeeded

pytestmark = pytest.mark.host

PACK_EXTENSIONS = {"ideogram4.reference.captionReport", "ideogram4.reference.samplerPresets",
                   "ideogram4.reference.captionStudio"}
PACK_URL_PART = "/extensions/comfyui-ideogram4-reference/"
SCREENSHOT_DIR = os.environ.get("IDEOGRAM4_SCREENSHOT_DIR")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "browser")


@pytest.fixture(scope="module")
def page(browser, server):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.pack_errors = []

    def on_console(message):
        location = message.location.get("url", "") if isinstance(message.location, dict) else ""
        if message.type == "error" and ("ideogram4" in message.text.lower() or PACK_URL_PART in location):
            page.pack_errors.append(f"console: {message.text} ({location})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: page.pack_errors.append(f"page error: {error} {error.stack}")
            if "ideogram4" in f"{error} {error.stack}".lower() else None)
    page.on("response", lambda response: page.pack_errors.append(f"HTTP {response.status}: {response.url}")
            if response.status >= 400 and ("ideogram4" in response.url) else None)
    open_app(page, server)
    yield page
    page.close()


def open_app(page, server):
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=90_000)
    page.wait_for_function("() => (window.app.extensions || []).some(e => e.name === 'ideogram4.reference.captionStudio')",
                           timeout=60_000)
    time.sleep(1.0)
    page.keyboard.press("Escape")  # newer frontends open the template browser on first start


def load(page, workflow: dict):
    page.evaluate("async wf => { await app.loadGraphData(wf); }", workflow)
    # The pack's extensions settle after their options request (preset values, the studio's form).
    page.wait_for_function("() => !app.graph._nodes.some(n => n.comfyClass === 'Ideogram4RefCaption' && !n.ideogram4Studio)",
                           timeout=30_000)
    time.sleep(0.8)


def boxes(page) -> dict:
    """Node id -> [x, y, w, h] of each node's box in graph units, title bar included."""
    return page.evaluate("""() => Object.fromEntries(app.graph._nodes.map(n => {
        const title = n.constructor.title_mode === 1 ? 0 : LiteGraph.NODE_TITLE_HEIGHT;
        return [String(n.id), [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]];
    }))""")


def assert_no_overlap(found: dict, label: str):
    ids = sorted(found)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (ax, ay, aw, ah), (bx, by, bw, bh) = found[a], found[b]
            overlap = ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
            assert not overlap, f"{label}: node {a} {found[a]} overlaps node {b} {found[b]}"


def screenshot(page, name, node_type=None):
    """Keep a screenshot when IDEOGRAM4_SCREENSHOT_DIR is set: the page, or only the node of ``node_type`` at 100 %
    zoom (the README's figures; the page is made tall enough for the whole node, then view and page are restored,
    so the test goes on as without screenshots)."""
    if not SCREENSHOT_DIR:
        return
    path = pathlib.Path(SCREENSHOT_DIR) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if node_type is None:
        page.screenshot(path=str(path))
        return
    viewport = page.viewport_size
    left, top, margin = 220, 70, 12  # clear of the frontend's sidebar, tab bar and floating toolbars
    node = page.evaluate("""type => { const n = app.graph._nodes.find(n => n.comfyClass === type);
        const ds = app.canvas.ds, c = app.canvas.canvas.getBoundingClientRect();
        return {size: [n.size[0], n.size[1] + LiteGraph.NODE_TITLE_HEIGHT], view: [ds.scale, [...ds.offset]],
                canvas: [c.left, c.top]}; }""",
                         node_type)
    page.set_viewport_size({"width": viewport["width"], "height": max(viewport["height"], int(node["size"][1]) + top + 300)})
    time.sleep(0.5)
    page.evaluate("""([type, left, top]) => { const n = app.graph._nodes.find(n => n.comfyClass === type);
        const ds = app.canvas.ds; ds.scale = 1;
        ds.offset = [left - n.pos[0], top + LiteGraph.NODE_TITLE_HEIGHT - n.pos[1]]; app.canvas.setDirty(true, true); }""",
                  [node_type, left, top])
    time.sleep(0.8)  # the frontend moves the DOM widgets on its next frames
    page.screenshot(path=str(path), clip={"x": node["canvas"][0] + left - margin, "y": node["canvas"][1] + top - margin, "width": node["size"][0] + 2 * margin,
                                          "height": node["size"][1] + 2 * margin})
    page.set_viewport_size(viewport)
    page.evaluate("""([scale, offset]) => { const ds = app.canvas.ds; ds.scale = scale; ds.offset = offset;
        app.canvas.setDirty(true, true); }""", node["view"])
    time.sleep(0.5)


def widget_state(page, node_type) -> dict:
    return page.evaluate("""type => { const n = app.graph._nodes.find(n => n.comfyClass === type);
        return Object.fromEntries(n.widgets.map(w => [w.name, {value: w.value, hidden: !!w.hidden}])); }""", node_type)


def test_extension_loads_once_without_errors(page):
    names = page.evaluate("() => (app.extensions || []).map(e => e.name).filter(n => n.startsWith('ideogram4'))")
    assert sorted(names) == sorted(PACK_EXTENSIONS), names
    assert page.pack_errors == []


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_example_workflow_nodes_do_not_overlap_and_the_note_is_in_view(page, name):
    load(page, load_workflow(name))
    assert_no_overlap(boxes(page), name)
    note = page.evaluate("""() => { const n = app.graph._nodes.find(n => n.type === 'Note');
        const ds = app.canvas.ds; const c = app.canvas.canvas.getBoundingClientRect();
        return {left: (n.pos[0] + ds.offset[0]) * ds.scale, top: (n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT + ds.offset[1]) * ds.scale,
                right: (n.pos[0] + n.size[0] + ds.offset[0]) * ds.scale, bottom: (n.pos[1] + n.size[1] + ds.offset[1]) * ds.scale,
                width: c.width, height: c.height}; }""")
    assert note["left"] >= 0 and note["top"] >= 0, note
    assert note["right"] <= note["width"] and note["bottom"] <= note["height"], note
    assert page.pack_errors == []


def test_templates_are_listed_with_thumbnails(server):
    listed = server.client.get_json("/workflow_templates")["comfyui-ideogram4-reference"]
    assert sorted(listed) == sorted(name.removesuffix(".json") for name in WORKFLOW_NAMES)
    for name in listed:
        status, data = server.client._request("GET", f"/api/workflow_templates/comfyui-ideogram4-reference/{name}.jpg")
        assert status == 200 and data[:3] == b"\xff\xd8\xff", f"{name}.jpg: HTTP {status}"


def test_preset_widgets_hide_and_come_back_with_the_preset_values(page):
    load(page, load_workflow("ideogram4_turbo.json"))
    screenshot(page, "sampler_preset.png", "Ideogram4RefSampler")
    widgets = widget_state(page, "Ideogram4RefSampler")
    assert [widgets[n]["hidden"] for n in ("steps", "mu", "std", "guidance_schedule")] == [True] * 4
    assert not widgets["seed"]["hidden"] and not widgets["preset"]["hidden"]
    height_with_preset = page.evaluate("() => app.graph._nodes.find(n => n.comfyClass === 'Ideogram4RefSampler').size[1]")
    page.evaluate("""() => { const n = app.graph._nodes.find(n => n.comfyClass === 'Ideogram4RefSampler');
        const w = n.widgets.find(w => w.name === 'preset'); w.value = 'Custom'; w.callback?.(w.value); }""")
    widgets = widget_state(page, "Ideogram4RefSampler")
    shown = {n: widgets[n] for n in ("steps", "mu", "std", "guidance_schedule")}
    assert shown == {"steps": {"value": 12, "hidden": False}, "mu": {"value": 0.5, "hidden": False},
                     "std": {"value": 1.75, "hidden": False}, "guidance_schedule": {"value": "7x11,3x1", "hidden": False}}
    assert page.evaluate("() => app.graph._nodes.find(n => n.comfyClass === 'Ideogram4RefSampler').size[1]") > height_with_preset


def assert_studio_fits_its_node(page):
    """The whole form, layout frame and element list included, lies inside the node: nothing is cut off."""
    time.sleep(0.5)  # the node follows the form's size on the next frame
    found = page.evaluate("""() => { const n = app.graph._nodes.find(n => n.comfyClass === 'Ideogram4RefCaption');
        const ds = app.canvas.ds, c = app.canvas.canvas.getBoundingClientRect();
        const rect = e => { const r = e.getBoundingClientRect(); return [r.top, r.bottom]; };
        const root = document.querySelector('.ideogram4-studio');
        return {node_bottom: c.top + (n.pos[1] + n.size[1] + ds.offset[1]) * ds.scale, root: rect(root),
                frame: rect(document.querySelector('.ideogram4-frame')),
                last: rect(root.lastElementChild), scroll: root.scrollHeight - root.clientHeight}; }""")
    assert found["scroll"] <= 1, found
    for part in ("root", "frame", "last"):
        assert found[part][1] <= found["node_bottom"] + 1, (part, found)


def in_view(page, locator):
    """Pan the graph (as a user drags the canvas) so ``locator`` is in the middle of the page: the studio is as
    tall as its content and does not scroll, so its lower part may start below the page's bottom edge."""
    box = locator.bounding_box()
    size = page.viewport_size
    page.evaluate("""([dx, dy]) => { const ds = app.canvas.ds; ds.offset = [ds.offset[0] + dx / ds.scale,
        ds.offset[1] + dy / ds.scale]; app.canvas.setDirty(true, true); }""",
                  [size["width"] / 2 - (box["x"] + box["width"] / 2), size["height"] / 2 - (box["y"] + box["height"] / 2)])
    time.sleep(0.5)  # the frontend moves the DOM widgets on its next frames
    return locator


def studio(page, selector):
    return page.locator(f".ideogram4-studio {selector}")


def test_caption_studio_edits_checks_runs_and_reloads(page, server):
    load(page, load_workflow("ideogram4_caption_studio.json"))
    page.wait_for_function("() => document.querySelector('.ideogram4-status')?.textContent === 'Caption valid'",
                           timeout=20_000)
    assert_studio_fits_its_node(page)
    screenshot(page, "caption_studio.png", "Ideogram4RefCaption")
    # A small frame and the Turbo preset keep the tiny models' run short.
    width_input = studio(page, "input[type=number]").nth(0)
    width_input.fill("256")
    width_input.dispatch_event("change")
    height_input = studio(page, "input[type=number]").nth(1)
    height_input.fill("256")
    height_input.dispatch_event("change")
    page.evaluate("""() => { const n = app.graph._nodes.find(n => n.comfyClass === 'Ideogram4RefSampler');
        const w = n.widgets.find(w => w.name === 'preset'); w.value = 'Turbo 12'; w.callback?.(w.value); }""")

    # Add a text element and draw its box on the frame by mouse.
    in_view(page, studio(page, "button:has-text('+ text')")).click()
    frame = studio(page, ".ideogram4-frame")
    in_view(page, frame)
    rect = frame.bounding_box()
    start = (rect["x"] + rect["width"] * 0.10, rect["y"] + rect["height"] * 0.05)
    end = (rect["x"] + rect["width"] * 0.60, rect["y"] + rect["height"] * 0.15)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=4)
    page.mouse.move(*end, steps=4)
    page.mouse.up()
    state = json.loads(widget_state(page, "Ideogram4RefCaption")["state"]["value"])
    new_element = state["caption"]["compositional_deconstruction"]["elements"][-1]
    y0, x0, y1, x1 = new_element["bbox"]
    assert abs(y0 - 50) <= 3 and abs(x0 - 100) <= 3 and abs(y1 - 150) <= 3 and abs(x1 - 600) <= 3, new_element
    assert all(isinstance(value, int) for value in new_element["bbox"])

    # The selected box goes with the Delete key and comes back with Ctrl+Z.
    page.mouse.click((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)  # select it
    page.keyboard.press("Delete")
    state = json.loads(widget_state(page, "Ideogram4RefCaption")["state"]["value"])
    assert "bbox" not in state["caption"]["compositional_deconstruction"]["elements"][-1]
    page.keyboard.press("Control+z")
    state = json.loads(widget_state(page, "Ideogram4RefCaption")["state"]["value"])
    assert state["caption"]["compositional_deconstruction"]["elements"][-1]["bbox"] == [y0, x0, y1, x1]

    # Set the text and the description; a bad colour shows a problem next to its field, fixing it clears it.
    last = studio(page, ".ideogram4-element").last
    last.locator("label:has-text('Text') input").fill("SALE")
    last.locator("label:has-text('Description') textarea").fill("Bold red capitals.")
    palette = last.locator("label:has-text('Colour palette') input:not([type=color])")
    palette.fill("#ff0000")
    index = len(state["caption"]["compositional_deconstruction"]["elements"]) - 1
    problem_text = ("path => [...document.querySelectorAll('.ideogram4-studio [data-path]')]"
                    ".find(e => e.dataset.path === path).querySelector(':scope > .ideogram4-problem').textContent")
    palette_path = f"$.compositional_deconstruction.elements[{index}].color_palette"
    page.wait_for_function(f"path => ({problem_text})(path).includes('#RRGGBB')", arg=palette_path, timeout=10_000)
    assert "color_palette[0]" in page.evaluate(problem_text, palette_path)
    screenshot(page, "caption_studio_problem.png", "Ideogram4RefCaption")
    palette.fill("#FF0000")
    page.wait_for_function(f"path => ({problem_text})(path) === ''", arg=palette_path, timeout=10_000)
    page.wait_for_function("() => document.querySelector('.ideogram4-status').textContent === 'Caption valid'")
    assert_studio_fits_its_node(page)  # the node grew with the new element

    # Queue: the server receives the state, and the caption it runs is the canonical JSON of what was edited.
    state = json.loads(widget_state(page, "Ideogram4RefCaption")["state"]["value"])
    encode_height = page.evaluate("() => app.graph._nodes.find(n => n.comfyClass === 'Ideogram4RefTextEncode').size[1]")
    before = set(server.client.get_json("/history"))
    page.evaluate("() => app.queuePrompt(0, 1)")
    deadline = time.monotonic() + 300
    entry = None
    while time.monotonic() < deadline and entry is None:
        new = set(server.client.get_json("/history")) - before
        entry = server.client.history(new.pop()) if new else None
        time.sleep(0.5)
    assert entry is not None, "the queued prompt did not finish"
    assert succeeded(entry), json.dumps(entry.get("status"))[:2000]
    prompt = entry["prompt"][2]
    caption_node = next(node for node in prompt.values() if node["class_type"] == "Ideogram4RefCaption")
    received = json.loads(caption_node["inputs"]["state"])
    assert received == state and (received["width"], received["height"]) == (256, 256)
    expected_element = {"type": "text", "bbox": [y0, x0, y1, x1], "text": "SALE", "desc": "Bold red capitals.",
                        "color_palette": ["#FF0000"]}
    assert list(received["caption"]["compositional_deconstruction"]["elements"][-1].items()) == list(expected_element.items())
    canonical, width, height = caption_of_state(caption_node["inputs"]["state"])
    assert canonical.endswith(',{"type":"text","bbox":[%d,%d,%d,%d],"text":"SALE","desc":"Bold red capitals.",'
                              '"color_palette":["#FF0000"]}]}}' % (y0, x0, y1, x1))
    assert (width, height) == (256, 256)
    images = server.client.images(entry)
    assert len(images) == 1 and images[0][:8] == b"\x89PNG\r\n\x1a\n"
    # The image comes back to the page, and Text Encode's caption report appears.
    page.wait_for_function("() => app.graph._nodes.find(n => n.comfyClass === 'SaveImage').imgs?.length > 0",
                           timeout=30_000)
    report = page.evaluate("""() => app.graph._nodes.find(n => n.comfyClass === 'Ideogram4RefTextEncode')
        .widgets.find(w => w.name === 'caption_check')?.area.value""")
    assert report and report.startswith("Caption check")
    # The node grew by the report's height instead of squeezing its other widgets.
    grown = page.evaluate("() => app.graph._nodes.find(n => n.comfyClass === 'Ideogram4RefTextEncode').size[1]")
    assert grown >= encode_height + 90, (encode_height, grown)
    assert_no_overlap(boxes(page), "caption studio after a run")
    screenshot(page, "caption_studio_run.png")

    # Save, reload the page, open the saved workflow: same layout, same caption.
    saved = page.evaluate("() => app.graph.serialize()")
    layout = boxes(page)
    open_app(page, server)
    load(page, saved)
    assert boxes(page) == layout
    reopened = page.evaluate("() => app.graph.serialize()")
    assert [node["widgets_values"] for node in reopened["nodes"]] == [node["widgets_values"] for node in saved["nodes"]]
    boxes_drawn = page.evaluate("() => document.querySelectorAll('.ideogram4-frame .ideogram4-box').length")
    assert boxes_drawn == sum(1 for e in state["caption"]["compositional_deconstruction"]["elements"] if "bbox" in e)
    assert page.pack_errors == []


def caption_state(page) -> dict:
    return json.loads(widget_state(page, "Ideogram4RefCaption")["state"]["value"])["caption"]


def test_caption_studio_paste_copy_reorder_and_move(page):
    load(page, load_workflow("ideogram4_caption_studio.json"))
    # Paste a caption written with its keys out of order: the editor holds it in canonical order.
    in_view(page, studio(page, "button:has-text('Paste JSON')")).click()
    pasted = {"compositional_deconstruction": {"elements": [
        {"desc": "a red kite", "bbox": [100, 100, 300, 400], "type": "obj"},
        {"text": "HELLO", "type": "text", "desc": "white letters"}], "background": "blue sky"},
        "high_level_description": "A kite in the sky."}
    studio(page, "textarea[placeholder^='paste']").fill(json.dumps(pasted))
    in_view(page, studio(page, "button:has-text('Load')")).click()
    page.wait_for_function("() => document.querySelectorAll('.ideogram4-element').length === 2")
    caption = caption_state(page)
    assert json.dumps(caption) == json.dumps({
        "high_level_description": "A kite in the sky.",
        "compositional_deconstruction": {"background": "blue sky", "elements": [
            {"type": "obj", "bbox": [100, 100, 300, 400], "desc": "a red kite"},
            {"type": "text", "text": "HELLO", "desc": "white letters"}]}})
    # Copy gives the canonical minified caption.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    in_view(page, studio(page, "button:has-text('Copy JSON')")).click()
    page.wait_for_function("() => app.graph._nodes.find(n => n.comfyClass === 'Ideogram4RefCaption').ideogram4Studio.copied")
    copied = page.evaluate("() => app.graph._nodes.find(n => n.comfyClass === 'Ideogram4RefCaption').ideogram4Studio.copied")
    assert copied == json.dumps(caption, separators=(",", ":"), ensure_ascii=False)
    # Reorder: the first element moves down.
    in_view(page, studio(page, ".ideogram4-element").first.locator("button[title='move down']")).click()
    assert [e["type"] for e in caption_state(page)["compositional_deconstruction"]["elements"]] == ["text", "obj"]
    # Move the box by dragging it a tenth of the frame to the right and down.
    in_view(page, studio(page, ".ideogram4-frame"))
    box = studio(page, ".ideogram4-box").first.bounding_box()
    rect = studio(page, ".ideogram4-frame").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + rect["width"] / 10, box["y"] + box["height"] / 2 + rect["height"] / 10,
                    steps=5)
    page.mouse.up()
    y0, x0, y1, x1 = caption_state(page)["compositional_deconstruction"]["elements"][1]["bbox"]
    assert abs(y0 - 200) <= 3 and abs(x0 - 200) <= 3 and (y1 - y0, x1 - x0) == (200, 300)
    # Resize from the bottom-right corner to the frame's corner.
    handle = studio(page, ".ideogram4-handle[data-corner='se']").first.bounding_box()
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(rect["x"] + rect["width"] + 20, rect["y"] + rect["height"] + 20, steps=5)
    page.mouse.up()
    assert caption_state(page)["compositional_deconstruction"]["elements"][1]["bbox"] == [y0, x0, 1000, 1000]
    assert page.pack_errors == []
