"""ComfyUI workflow files: check them against a live ``/object_info`` and convert UI format to API format.

UI format (what the frontend saves, ``version: 0.4``): ``nodes[]`` with positional ``widgets_values`` and
``links[]`` as ``[id, origin_id, origin_slot, target_id, target_slot, type]``. API format (what ``POST /prompt``
takes): ``{node_id: {"class_type": ..., "inputs": {name: value | [origin_id, origin_slot]}}}``.

Widget order is the node's input order from ``/object_info`` (``input_order`` where the host sends it, else the
order of ``required`` then ``optional``), counting only inputs the frontend draws as widgets. An INT with
``control_after_generate`` (or named ``seed`` / ``noise_seed``, the frontend's legacy rule) has one extra entry
right after it (``"fixed"``, ``"randomize"``, ...), and a combo with ``image_upload`` one for its upload button
(``"image"``). Note nodes are frontend-only and are skipped. Only plain
graphs are handled: no subgraphs, no bypassed or muted nodes, no primitive/reroute nodes.
"""

import copy

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY_TYPES = {"Note", "MarkdownNote"}
SEED_NAMES = {"seed", "noise_seed"}


class WorkflowError(ValueError):
    pass


def _input_specs(node_info: dict) -> list[tuple[str, list]]:
    """(name, spec) of every required and optional input, in the node's declared order."""
    inputs = node_info.get("input", {})
    order = node_info.get("input_order") or {group: list(inputs.get(group, {})) for group in ("required", "optional")}
    specs = []
    for group in ("required", "optional"):
        for name in order.get(group, []):
            specs.append((name, inputs[group][name]))
    return specs


def _options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    if _options(spec).get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_after_generate(name: str, spec: list) -> bool:
    options = _options(spec)
    if "control_after_generate" in options:
        return bool(options["control_after_generate"])
    return spec[0] == "INT" and name in SEED_NAMES


def widget_slots(node_info: dict) -> list[tuple[str | None, list | None]]:
    """One entry per ``widgets_values`` position: (input name, spec), or (None, None) for a control or upload
    entry."""
    slots = []
    for name, spec in _input_specs(node_info):
        if _is_widget(spec):
            slots.append((name, spec))
            if _has_control_after_generate(name, spec) or _options(spec).get("image_upload"):
                slots.append((None, None))
    return slots


def input_type(spec: list) -> str:
    """The socket type a link into this input must carry (a list means a combo)."""
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _links_by_id(workflow: dict) -> dict[int, list]:
    return {link[0]: link for link in workflow.get("links", [])}


def _types_match(a: str, b: str) -> bool:
    if "*" in (a, b):
        return True
    return bool(set(a.split(",")) & set(b.split(",")))


def validate_workflow(workflow: dict, object_info: dict) -> list[str]:
    """Every problem found, as readable sentences; an empty list means the graph is consistent."""
    problems = []
    for key in ("last_node_id", "last_link_id", "nodes", "links", "version"):
        if key not in workflow:
            problems.append(f"top-level key {key!r} is missing")
    if problems:
        return problems
    if workflow["version"] != 0.4:
        problems.append(f"version is {workflow['version']!r}, expected 0.4")
    nodes = {}
    for node in workflow["nodes"]:
        if node["id"] in nodes:
            problems.append(f"node id {node['id']} is used twice")
        nodes[node["id"]] = node
    if nodes and workflow["last_node_id"] < max(nodes):
        problems.append(f"last_node_id {workflow['last_node_id']} is below the largest node id {max(nodes)}")
    links = _links_by_id(workflow)
    if links and workflow["last_link_id"] < max(links):
        problems.append(f"last_link_id {workflow['last_link_id']} is below the largest link id {max(links)}")

    for node in workflow["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        if node.get("mode", 0) != 0:
            problems.append(f"{where}: mode {node['mode']} (muted/bypassed) is not supported by the converter")
        if node["type"] in FRONTEND_ONLY_TYPES:
            continue
        info = object_info.get(node["type"])
        if info is None:
            problems.append(f"{where}: class type {node['type']!r} is not in /object_info")
            continue
        slots = widget_slots(info)
        values = node.get("widgets_values") or []
        if len(values) != len(slots):
            names = [name or "<control_after_generate>" for name, _ in slots]
            problems.append(f"{where}: {len(values)} widgets_values but the node has {len(slots)} widget entries {names}")
        else:
            for (name, spec), value in zip(slots, values):
                if name is None or input_type(spec) != "COMBO":
                    continue
                options = spec[0] if isinstance(spec[0], list) else _options(spec).get("options")
                # Model-file combos list what is on disk, so a missing file is a runtime, not a graph, error.
                if options is not None and value not in options and not str(value).endswith(".safetensors"):
                    problems.append(f"{where}: {name}={value!r} is not one of the options {options}")
        specs = dict(_input_specs(info))
        for slot_index, socket in enumerate(node.get("inputs", [])):
            if socket["name"] not in specs:
                problems.append(f"{where}: input {socket['name']!r} is not an input of {node['type']}")
            link_id = socket.get("link")
            if link_id is None:
                if socket["name"] in info.get("input", {}).get("required", {}) and not _is_widget(specs[socket["name"]]):
                    problems.append(f"{where}: required input {socket['name']!r} is not connected")
                continue
            link = links.get(link_id)
            if link is None:
                problems.append(f"{where}: input {socket['name']!r} refers to link {link_id}, which does not exist")
            elif link[3] != node["id"] or link[4] != slot_index:
                problems.append(f"{where}: link {link_id} targets node {link[3]} slot {link[4]}, not this input")
        for output_index, socket in enumerate(node.get("outputs", [])):
            for link_id in socket.get("links") or []:
                link = links.get(link_id)
                if link is None or link[1] != node["id"] or link[2] != output_index:
                    problems.append(f"{where}: output {socket['name']!r} lists link {link_id}, which does not start here")

    for link_id, link in links.items():
        if len(link) != 6:
            problems.append(f"link {link_id}: expected [id, origin_id, origin_slot, target_id, target_slot, type], got {link}")
            continue
        _, origin_id, origin_slot, target_id, target_slot, link_type = link
        origin, target = nodes.get(origin_id), nodes.get(target_id)
        if origin is None or target is None:
            problems.append(f"link {link_id}: origin {origin_id} or target {target_id} is not a node")
            continue
        origin_info, target_info = object_info.get(origin["type"]), object_info.get(target["type"])
        if origin_info is not None:
            outputs = origin_info.get("output", [])
            if origin_slot >= len(outputs):
                problems.append(f"link {link_id}: {origin['type']} has no output slot {origin_slot}")
            elif not _types_match(outputs[origin_slot], link_type):
                problems.append(f"link {link_id}: {origin['type']} output {origin_slot} is {outputs[origin_slot]}, link says {link_type}")
        if target_info is not None and target_slot < len(target.get("inputs", [])):
            name = target["inputs"][target_slot]["name"]
            spec = dict(_input_specs(target_info)).get(name)
            if spec is not None and not _types_match(input_type(spec), link_type):
                problems.append(f"link {link_id}: {target['type']}.{name} takes {input_type(spec)}, link carries {link_type}")
    return problems


def to_api_prompt(workflow: dict, object_info: dict) -> dict:
    """The API-format prompt for a UI-format workflow (raises WorkflowError on anything it cannot convert)."""
    problems = validate_workflow(workflow, object_info)
    if problems:
        raise WorkflowError("workflow does not match this host's nodes:\n  " + "\n  ".join(problems))
    links = _links_by_id(workflow)
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY_TYPES:
            continue
        info = object_info[node["type"]]
        inputs = {}
        for (name, _), value in zip(widget_slots(info), node.get("widgets_values") or []):
            if name is not None:
                inputs[name] = copy.deepcopy(value)
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                link = links[socket["link"]]
                inputs[socket["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def nodes_of_type(prompt: dict, class_type: str) -> list[dict]:
    """The API-format nodes of one class (for overriding inputs in tests)."""
    return [node for node in prompt.values() if node["class_type"] == class_type]
