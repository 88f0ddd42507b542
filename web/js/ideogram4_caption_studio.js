// The caption studio of "Ideogram 4 Caption (reference)": a form for the caption's fields, an ordered element
// list and a frame of the image's aspect on which each element's box is drawn, moved, resized and deleted.
//
// Everything lives in the node's `state` widget ({"width", "height", "caption"}), which the workflow saves and the
// server reads, so the editor is only a view of that string. The rules are never checked here: every edit is
// posted to the pack's route (nodes/caption_route.py -> ideogram4.caption), whose problems are shown next to the
// field their JSON path points at.
import { api, app, fitNode, packOptions, setWidgetHidden } from "./ideogram4_shared.js";

const NODE_ID = "Ideogram4RefCaption";
const VALIDATE_ROUTE = "/ideogram4_ref/caption/validate";
const GRID = 1000; // bbox units: integers 0-1000 over the frame, [y_min, x_min, y_max, x_max], origin top-left
const MIN_BOX = 5; // a drag shorter than this (grid units) is a click, not a box
const EDITOR_MIN_HEIGHT = 200; // until the form is built; then the node follows the form's own height
const UNDO_LIMIT = 100;
const TYPING_MERGE_MS = 800; // keystrokes in one field within this time are one undo step

// Key orders the editor writes objects in (the schema's layout; the server still checks every caption).
const TOP_KEYS = ["high_level_description", "style_description", "compositional_deconstruction"];
const STYLE_KEYS = { photo: ["aesthetics", "lighting", "photo", "medium", "color_palette"],
                     art: ["aesthetics", "lighting", "medium", "art_style", "color_palette"] };
const ELEMENT_KEYS = ["type", "bbox", "text", "desc", "color_palette"];

const STUDIO_CSS = `
.ideogram4-studio { display: flex; flex-direction: column; gap: 6px; font: 12px sans-serif; color: var(--input-text, #ddd);
  background: var(--comfy-menu-bg, #353535); border: 1px solid var(--border-color, #4e4e4e); border-radius: 6px;
  padding: 6px; box-sizing: border-box; }
.ideogram4-studio * { box-sizing: border-box; }
.ideogram4-studio label { display: flex; flex-direction: column; gap: 2px; color: var(--descrip-text, #999); }
.ideogram4-studio input, .ideogram4-studio textarea, .ideogram4-studio select, .ideogram4-studio button {
  font: inherit; color: var(--input-text, #ddd); background: var(--comfy-input-bg, #222);
  border: 1px solid var(--border-color, #4e4e4e); border-radius: 4px; padding: 2px 4px; }
.ideogram4-studio textarea { resize: vertical; min-height: 34px; }
.ideogram4-studio button { cursor: pointer; }
.ideogram4-studio button:hover { border-color: var(--input-text, #ddd); }
.ideogram4-row { display: flex; gap: 4px; align-items: center; flex-wrap: wrap; }
.ideogram4-row > label { flex: 1 1 120px; }
.ideogram4-section { border-top: 1px solid var(--border-color, #4e4e4e); padding-top: 4px; display: flex;
  flex-direction: column; gap: 4px; }
.ideogram4-section-title { font-weight: bold; color: var(--input-text, #ddd); }
.ideogram4-frame { position: relative; align-self: center; background: var(--comfy-input-bg, #222);
  border: 1px solid var(--border-color, #4e4e4e); cursor: crosshair; user-select: none; outline: none; }
.ideogram4-keys:focus + .ideogram4-frame { border-color: var(--input-text, #ddd); }
.ideogram4-box { position: absolute; border: 2px solid hsl(var(--hue), 80%, 60%); background: hsla(var(--hue), 80%, 60%, 0.15);
  cursor: move; }
.ideogram4-box.selected { border-style: dashed; background: hsla(var(--hue), 80%, 60%, 0.3); }
.ideogram4-box span { position: absolute; left: 2px; top: 1px; font-size: 11px; color: #fff; text-shadow: 0 0 2px #000;
  pointer-events: none; white-space: nowrap; overflow: hidden; max-width: 100%; }
.ideogram4-handle { position: absolute; width: 10px; height: 10px; background: hsl(var(--hue), 80%, 60%); }
.ideogram4-element { border: 1px solid var(--border-color, #4e4e4e); border-left: 4px solid hsl(var(--hue), 80%, 60%);
  border-radius: 4px; padding: 4px; display: flex; flex-direction: column; gap: 3px; }
.ideogram4-element.selected { background: var(--comfy-input-bg, #222); }
.ideogram4-swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid var(--border-color, #4e4e4e);
  border-radius: 3px; vertical-align: middle; }
.ideogram4-problem { color: var(--error-text, #ff6b6b); font-size: 11px; white-space: pre-wrap; }
.ideogram4-status { font-size: 11px; min-height: 14px; }
.ideogram4-status.ok { color: #6c6; }
.ideogram4-status.bad { color: var(--error-text, #ff6b6b); }
`;

function injectCss() {
  if (document.getElementById("ideogram4-studio-css")) return;
  const style = document.createElement("style");
  style.id = "ideogram4-studio-css";
  style.textContent = STUDIO_CSS;
  document.head.appendChild(style);
}

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") node.style.cssText = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node[key] = value;
  }
  for (const child of [].concat(children)) if (child != null) node.append(child);
  return node;
}

function ordered(obj, keys) {
  const out = {};
  for (const key of keys) if (obj[key] !== undefined) out[key] = obj[key];
  for (const [key, value] of Object.entries(obj)) if (!(key in out) && value !== undefined) out[key] = value;
  return out;
}

const hue = (index) => (index * 67 + 200) % 360;
const clamp = (value, low, high) => Math.min(high, Math.max(low, value));
const parsePalette = (text) => text.split(/[\s,]+/).filter(Boolean);

class CaptionStudio {
  constructor(node, stateWidget, options) {
    this.node = node;
    this.stateWidget = stateWidget;
    this.options = options;
    this.undoStack = [];
    this.lastTyping = null;
    this.selected = -1;
    this.problems = [];
    this.validationSeq = 0;
    this.root = el("div", { className: "ideogram4-studio", tabIndex: -1 });
    this.root.addEventListener("keydown", (event) => this.onKey(event));
    // Mouse events belong to the editor, not to the graph canvas behind it. The wheel zooms the graph (the node is
    // as tall as the form, nothing in it scrolls) except over a text box, which scrolls its own text.
    for (const type of ["pointerdown", "contextmenu"]) this.root.addEventListener(type, (e) => e.stopPropagation());
    this.root.addEventListener("wheel", (e) => { if (e.target.tagName === "TEXTAREA") e.stopPropagation(); });
    // The node is sized to the whole form (frame and element list included) and follows it when it grows or
    // shrinks: an element added, a text box resized, another frame aspect.
    this.contentHeight = EDITOR_MIN_HEIGHT;
    this.resizeObserver = new ResizeObserver(() => this.fitToContent());
    this.resizeObserver.observe(this.root);
    this.load(stateWidget.value);
  }

  // -- state ------------------------------------------------------------------------------------------------
  load(text) {
    let state;
    try {
      state = JSON.parse(text);
    } catch {
      state = null;
    }
    if (!state || typeof state !== "object" || typeof state.caption !== "object" || !state.caption) {
      state = { width: 1024, height: 1024, caption: { compositional_deconstruction: { background: "", elements: [] } } };
    }
    this.state = state;
    this.render();
  }

  get caption() { return this.state.caption; }
  get composition() {
    this.state.caption.compositional_deconstruction ??= { background: "", elements: [] };
    return this.state.caption.compositional_deconstruction;
  }
  get elements() {
    if (!Array.isArray(this.composition.elements)) this.composition.elements = [];
    return this.composition.elements;
  }

  text() { return JSON.stringify(this.state); }

  // Every change goes through here: remember the previous state for undo, store, re-check.
  edit(change, { typingKey = null, rerender = true } = {}) {
    const now = Date.now();
    const merge = typingKey && this.lastTyping?.key === typingKey && now - this.lastTyping.time < TYPING_MERGE_MS;
    if (!merge) {
      this.undoStack.push(this.text());
      if (this.undoStack.length > UNDO_LIMIT) this.undoStack.shift();
    }
    this.lastTyping = typingKey ? { key: typingKey, time: now } : null;
    change();
    this.commit(rerender);
  }

  commit(rerender = true) {
    this.stateWidget.value = this.text();
    this.node.setDirtyCanvas?.(true, true);
    if (rerender) this.render();
    else this.renderBoxes();
    this.validate();
  }

  undo() {
    const previous = this.undoStack.pop();
    if (previous === undefined) return;
    this.lastTyping = null;
    this.state = JSON.parse(previous);
    this.selected = Math.min(this.selected, this.elements.length - 1);
    this.commit(true);
  }

  setTop(key, value) {
    const caption = { ...this.caption, [key]: value };
    if (value === undefined) delete caption[key];
    this.state.caption = ordered(caption, TOP_KEYS);
  }

  styleKind() {
    const style = this.caption.style_description;
    if (!style || typeof style !== "object") return "none";
    return "art_style" in style && !("photo" in style) ? "art" : "photo";
  }

  setStyle(key, value) {
    const kind = this.styleKind();
    const style = { ...this.caption.style_description, [key]: value };
    if (value === undefined) delete style[key];
    this.setTop("style_description", ordered(style, STYLE_KEYS[kind === "art" ? "art" : "photo"]));
  }

  setStyleKind(kind) {
    if (kind === "none") return this.setTop("style_description", undefined);
    const style = { aesthetics: "", lighting: "", medium: kind === "photo" ? "photograph" : "illustration",
                    ...(this.caption.style_description ?? {}) };
    delete style.photo;
    delete style.art_style;
    if (kind === "photo") style.photo = this.caption.style_description?.photo ?? "";
    else style.art_style = this.caption.style_description?.art_style ?? "";
    this.setTop("style_description", ordered(style, STYLE_KEYS[kind]));
  }

  setElement(index, key, value) {
    const element = { ...this.elements[index], [key]: value };
    if (value === undefined) delete element[key];
    if (element.type !== "text") delete element.text;
    else element.text ??= "";
    this.elements[index] = ordered(element, ELEMENT_KEYS);
  }

  // -- checking (the server's rules) --------------------------------------------------------------------------
  validate() {
    clearTimeout(this.validateTimer);
    this.validateTimer = setTimeout(() => this.runValidation(), 200);
  }

  async runValidation() {
    const seq = ++this.validationSeq;
    const answer = await this.askServer({ caption: this.caption });
    if (!answer || seq !== this.validationSeq) return; // unreachable (shown), or an older answer arriving late
    this.problems = answer.problems ?? [];
    this.showProblems();
  }

  // Each field registers the JSON path it edits; a problem is shown under the field with the longest path that
  // starts its path (a colour's problem under its palette, a bbox value's under its element's box).
  showProblems() {
    for (const slot of this.root.querySelectorAll(".ideogram4-problem")) slot.textContent = "";
    const slots = [...this.root.querySelectorAll("[data-path]")];
    for (const problem of this.problems) {
      let best = null;
      for (const slot of slots) {
        const path = slot.dataset.path;
        const covers = problem.path === path || problem.path.startsWith(path + ".") || problem.path.startsWith(path + "[");
        if (covers && (!best || path.length > best.dataset.path.length)) best = slot;
      }
      const target = (best ?? this.generalProblems).querySelector(":scope > .ideogram4-problem") ?? this.generalProblems;
      const line = `${problem.path}: ${problem.message}${problem.hint ? ` (${problem.hint})` : ""}`;
      target.textContent += (target.textContent ? "\n" : "") + line;
    }
    const count = this.problems.length;
    this.status.className = `ideogram4-status ${count ? "bad" : "ok"}`;
    this.status.textContent = count ? `${count} problem(s) in the caption` : "Caption valid";
  }

  // -- rendering ------------------------------------------------------------------------------------------------
  field(label, path, input) {
    return el("label", { dataset: { path } }, [label, input, el("div", { className: "ideogram4-problem" })]);
  }

  textInput(value, onInput, { multiline = false, placeholder = "", list = null, key }) {
    const input = el(multiline ? "textarea" : "input", { value: value ?? "", placeholder, rows: 2 });
    if (list) input.setAttribute("list", list);
    input.addEventListener("input", () => this.edit(() => onInput(input.value), { typingKey: key, rerender: false }));
    return input;
  }

  paletteInput(palette, onChange, key) {
    const swatches = el("span", { className: "ideogram4-row" });
    const showSwatches = (colours) => {
      swatches.replaceChildren(...colours.map((colour) => el("span", { className: "ideogram4-swatch", title: colour,
                                                                        style: `background:${colour}` })));
    };
    const input = el("input", { value: (palette ?? []).join(", "), placeholder: "#1B1B2F, #E43F5A" });
    input.addEventListener("input", () => {
      const colours = parsePalette(input.value);
      showSwatches(colours);
      this.edit(() => onChange(colours.length ? colours : undefined), { typingKey: key, rerender: false });
    });
    const picker = el("input", { type: "color", title: "add a colour", style: "width:28px;padding:0" });
    picker.addEventListener("change", () => {
      const colours = [...parsePalette(input.value), picker.value.toUpperCase()];
      this.edit(() => onChange(colours));
    });
    showSwatches(palette ?? []);
    return el("span", { className: "ideogram4-row" }, [input, picker, swatches]);
  }

  render() {
    const focusedPath = document.activeElement?.closest?.("[data-path]")?.dataset.path;
    const frameFocused = this.keys && document.activeElement === this.keys; // keeps Delete / Ctrl+Z on the frame
    const root = this.root;
    root.replaceChildren();
    const datalists = [["ideogram4-mediums", this.options.mediums], ["ideogram4-aesthetics", this.options.aesthetics],
                       ["ideogram4-lighting", this.options.lighting]];
    for (const [id, values] of datalists) {
      root.append(el("datalist", { id }, values.map((value) => el("option", { value }))));
    }

    // Toolbar: frame size, paste/copy, undo, status.
    const sizes = this.options.frame_sizes;
    const current = sizes.findIndex(([w, h]) => w === this.state.width && h === this.state.height);
    const frameSelect = el("select", { title: "frame (image) size" },
      [...sizes.map(([w, h], i) => el("option", { value: String(i), textContent: `${w} × ${h}` })),
       el("option", { value: "custom", textContent: "custom" })]);
    frameSelect.value = current >= 0 ? String(current) : "custom";
    frameSelect.addEventListener("change", () => {
      if (frameSelect.value === "custom") return this.render();
      const [w, h] = sizes[Number(frameSelect.value)];
      this.edit(() => { this.state.width = w; this.state.height = h; });
    });
    const sizeInput = (name) => {
      const input = el("input", { type: "number", value: this.state[name], min: this.options.size_min,
                                  max: this.options.size_max, step: this.options.size_step, style: "width:70px",
                                  title: `${name} (a multiple of ${this.options.size_step})` });
      input.addEventListener("change", () => {
        const step = this.options.size_step;
        const value = clamp(Math.round(Number(input.value) / step) * step, this.options.size_min, this.options.size_max);
        this.edit(() => { this.state[name] = value; });
      });
      return input;
    };
    const pasteArea = el("textarea", { placeholder: "paste a JSON caption here, then Load", rows: 3, style: "display:none" });
    const loadButton = el("button", { textContent: "Load", style: "display:none", onclick: () => this.paste(pasteArea.value) });
    this.generalProblems = el("div", { className: "ideogram4-problem" });
    this.status = el("div", { className: "ideogram4-status" });
    root.append(
      el("div", { className: "ideogram4-row" }, [
        "Frame", frameSelect, sizeInput("width"), "×", sizeInput("height"),
        el("button", { textContent: "Paste JSON", title: "load a caption written elsewhere",
                       onclick: () => { pasteArea.style.display = loadButton.style.display = ""; pasteArea.focus(); } }),
        el("button", { textContent: "Copy JSON", title: "copy the canonical caption", onclick: () => this.copy() }),
        el("button", { textContent: "Undo", title: "undo the last edit (Ctrl+Z)", onclick: () => this.undo() }),
      ]),
      el("div", { className: "ideogram4-row" }, [pasteArea, loadButton]),
      this.status, this.generalProblems,
    );

    // Description and style.
    root.append(this.field("High-level description", "$.high_level_description",
      this.textInput(this.caption.high_level_description, (v) => this.setTop("high_level_description", v),
                     { multiline: true, key: "hld", placeholder: "one or two sentences about the whole image" })));
    const kind = this.styleKind();
    const kindSelect = el("select", {}, [["none", "no style"], ["photo", "photo"], ["art", "art style"]].map(
      ([value, textContent]) => el("option", { value, textContent })));
    kindSelect.value = kind;
    kindSelect.addEventListener("change", () => this.edit(() => this.setStyleKind(kindSelect.value)));
    const styleSection = el("div", { className: "ideogram4-section", dataset: { path: "$.style_description" } },
      [el("div", { className: "ideogram4-row" }, [el("span", { className: "ideogram4-section-title", textContent: "Style" }), kindSelect]),
       el("div", { className: "ideogram4-problem" })]);
    if (kind !== "none") {
      const style = this.caption.style_description;
      const p = "$.style_description";
      const styleText = (key, label, extra = {}) => this.field(label, `${p}.${key}`,
        this.textInput(style[key], (v) => this.setStyle(key, v), { key: `style.${key}`, ...extra }));
      styleSection.append(
        el("div", { className: "ideogram4-row" }, [
          styleText("aesthetics", "Aesthetics", { list: "ideogram4-aesthetics" }),
          styleText("lighting", "Lighting", { list: "ideogram4-lighting" }),
          styleText("medium", "Medium", { list: "ideogram4-mediums" })]),
        kind === "photo" ? styleText("photo", "Photo (camera, lens, framing)") : styleText("art_style", "Art style"),
        this.field("Colour palette", `${p}.color_palette`,
          this.paletteInput(style.color_palette, (v) => this.setStyle("color_palette", v), "style.palette")));
    }
    root.append(styleSection);

    root.append(this.field("Background", "$.compositional_deconstruction.background",
      this.textInput(this.composition.background, (v) => { this.composition.background = v; },
                     { multiline: true, key: "background", placeholder: "the scene behind the elements" })));

    // Frame with the boxes.
    this.frame = el("div", { className: "ideogram4-frame", tabIndex: 0, title:
      "Drag on empty space to draw the selected element's box; drag a box to move it, its corner to resize; Delete removes the selected box." });
    this.frame.addEventListener("pointerdown", (event) => this.onFramePointerDown(event));
    // The frame's keys (Delete, Ctrl+Z) arrive through this invisible input: the frontend leaves keys typed in an
    // input to it, where on a plain element its own shortcuts (delete the node, undo the graph) would run first.
    this.keys = el("input", { className: "ideogram4-keys", readOnly: true, tabIndex: -1,
                              style: "position:absolute;opacity:0;width:1px;height:1px;pointer-events:none" });
    root.append(el("div", { className: "ideogram4-section", style: "position:relative" }, [
      el("span", { className: "ideogram4-section-title", textContent: `Layout (${this.state.width} × ${this.state.height})` }),
      this.keys, this.frame]));

    // Elements.
    const list = el("div", { className: "ideogram4-section", dataset: { path: "$.compositional_deconstruction.elements" } },
      [el("div", { className: "ideogram4-row" }, [
        el("span", { className: "ideogram4-section-title", textContent: "Elements" }),
        el("button", { textContent: "+ object", onclick: () => this.addElement("obj") }),
        el("button", { textContent: "+ text", onclick: () => this.addElement("text") })]),
       el("div", { className: "ideogram4-problem" })]);
    this.elements.forEach((element, index) => list.append(this.elementRow(element, index)));
    root.append(list);

    this.layoutFrame();
    this.renderBoxes();
    this.showProblems();
    if (frameFocused) this.keys.focus({ preventScroll: true });
    else if (focusedPath) root.querySelector(`[data-path="${CSS.escape(focusedPath)}"] input, [data-path="${CSS.escape(focusedPath)}"] textarea`)?.focus();
  }

  elementRow(element, index) {
    const path = `$.compositional_deconstruction.elements[${index}]`;
    const row = el("div", { className: `ideogram4-element${index === this.selected ? " selected" : ""}`,
                            style: `--hue:${hue(index)}`, dataset: { path, index: String(index) } });
    row.addEventListener("focusin", () => this.select(index, false));
    row.addEventListener("click", () => this.select(index, false));
    const typeSelect = el("select", {}, [["obj", "object"], ["text", "text"]].map(([value, textContent]) => el("option", { value, textContent })));
    typeSelect.value = element.type === "text" ? "text" : "obj";
    typeSelect.addEventListener("change", () => this.edit(() => this.setElement(index, "type", typeSelect.value)));
    const box = Array.isArray(element.bbox) ? `[${element.bbox.join(", ")}]` : "no box (draw one on the layout)";
    const move = (delta) => this.edit(() => {
      const target = index + delta;
      if (target < 0 || target >= this.elements.length) return;
      const [moved] = this.elements.splice(index, 1);
      this.elements.splice(target, 0, moved);
      this.selected = target;
    });
    row.append(
      el("div", { className: "ideogram4-row" }, [
        el("b", { textContent: `#${index + 1}` }), typeSelect,
        el("span", { className: "ideogram4-box-label", textContent: box, style: "flex:1" }),
        el("button", { textContent: "↑", title: "move up", onclick: () => move(-1) }),
        el("button", { textContent: "↓", title: "move down", onclick: () => move(1) }),
        el("button", { textContent: "remove box", title: "leave the element unplaced", disabled: !element.bbox,
                       onclick: () => this.edit(() => this.setElement(index, "bbox", undefined)) }),
        el("button", { textContent: "✕", title: "delete the element", onclick: () => this.edit(() => {
          this.elements.splice(index, 1);
          this.selected = -1;
        }) })]),
      el("div", { dataset: { path: `${path}.bbox` } }, el("div", { className: "ideogram4-problem" })));
    if (element.type === "text") {
      row.append(this.field("Text (the words to render)", `${path}.text`,
        this.textInput(element.text, (v) => this.setElement(index, "text", v), { key: `e${index}.text` })));
    }
    row.append(
      this.field("Description", `${path}.desc`,
        this.textInput(element.desc, (v) => this.setElement(index, "desc", v), { multiline: true, key: `e${index}.desc` })),
      this.field("Colour palette", `${path}.color_palette`,
        this.paletteInput(element.color_palette, (v) => this.setElement(index, "color_palette", v), `e${index}.palette`)));
    return row;
  }

  addElement(type) {
    this.edit(() => {
      this.elements.push(type === "text" ? { type, text: "", desc: "" } : { type, desc: "" });
      this.selected = this.elements.length - 1;
    });
  }

  select(index, rerender = true) {
    if (this.selected === index) return;
    this.selected = index;
    for (const row of this.root.querySelectorAll(".ideogram4-element")) {
      row.classList.toggle("selected", Number(row.dataset.index) === index);
    }
    if (rerender) this.render();
    else this.renderBoxes();
  }

  fitToContent() {
    const height = Math.ceil(this.root.offsetHeight);
    if (!height) return; // not laid out yet: the observer calls again once it is
    this.contentHeight = height;
    fitNode(this.node, { shrink: true });
  }

  // -- the frame ----------------------------------------------------------------------------------------------
  layoutFrame() {
    const width = Math.max(200, (this.node.size?.[0] ?? 500) - 40);
    const height = Math.min(360, (width * this.state.height) / this.state.width);
    this.frame.style.width = `${(height * this.state.width) / this.state.height}px`;
    this.frame.style.height = `${height}px`;
  }

  renderBoxes() {
    if (!this.frame) return;
    this.frame.replaceChildren();
    this.elements.forEach((element, index) => {
      const bbox = element.bbox;
      if (!Array.isArray(bbox) || bbox.length !== 4) return;
      const [y0, x0, y1, x1] = bbox.map(Number);
      const label = element.type === "text" ? `#${index + 1} "${element.text ?? ""}"` : `#${index + 1} ${element.desc ?? ""}`;
      const box = el("div", { className: `ideogram4-box${index === this.selected ? " selected" : ""}`,
                              style: `--hue:${hue(index)};top:${y0 / 10}%;left:${x0 / 10}%;height:${(y1 - y0) / 10}%;width:${(x1 - x0) / 10}%`,
                              dataset: { index: String(index) } }, el("span", { textContent: label }));
      for (const corner of ["nw", "se"]) {
        box.append(el("div", { className: "ideogram4-handle", dataset: { corner },
                               style: corner === "nw" ? "left:-5px;top:-5px;cursor:nwse-resize" : "right:-5px;bottom:-5px;cursor:nwse-resize" }));
      }
      this.frame.append(box);
    });
    for (const label of this.root.querySelectorAll(".ideogram4-element")) {
      const element = this.elements[Number(label.dataset.index)];
      const text = label.querySelector(".ideogram4-box-label");
      if (text && element) text.textContent = Array.isArray(element.bbox) ? `[${element.bbox.join(", ")}]` : "no box (draw one on the layout)";
    }
  }

  gridPoint(event) {
    const rect = this.frame.getBoundingClientRect();
    return [clamp(Math.round(((event.clientY - rect.top) / rect.height) * GRID), 0, GRID),
            clamp(Math.round(((event.clientX - rect.left) / rect.width) * GRID), 0, GRID)];
  }

  onFramePointerDown(event) {
    if (event.button !== 0) return;
    event.preventDefault();
    this.keys.focus({ preventScroll: true });
    const boxNode = event.target.closest(".ideogram4-box");
    const corner = event.target.dataset?.corner;
    const start = this.gridPoint(event);
    let index;
    let mode;
    if (boxNode) {
      index = Number(boxNode.dataset.index);
      mode = corner ?? "move";
    } else {
      // Draw: the selected element's box, else the first element without one, else a new object.
      index = this.selected >= 0 && this.elements[this.selected] && !this.elements[this.selected].bbox
        ? this.selected : this.elements.findIndex((e) => !e.bbox);
      mode = "draw";
    }
    const before = this.text();
    const original = index >= 0 ? this.elements[index]?.bbox?.slice() : null;
    let changed = false;
    const onMove = (moveEvent) => {
      const [y, x] = this.gridPoint(moveEvent);
      let bbox;
      if (mode === "draw") {
        if (Math.abs(y - start[0]) < MIN_BOX && Math.abs(x - start[1]) < MIN_BOX && !changed) return;
        bbox = [Math.min(start[0], y), Math.min(start[1], x), Math.max(start[0], y), Math.max(start[1], x)];
        if (index < 0) {
          this.elements.push({ type: "obj", desc: "" }); // its row appears when the drag ends
          index = this.elements.length - 1;
        }
      } else if (mode === "move") {
        const dy = clamp(y - start[0], -original[0], GRID - original[2]);
        const dx = clamp(x - start[1], -original[1], GRID - original[3]);
        bbox = [original[0] + dy, original[1] + dx, original[2] + dy, original[3] + dx];
      } else if (mode === "nw") {
        bbox = [Math.min(y, original[2] - 1), Math.min(x, original[3] - 1), original[2], original[3]];
      } else {
        bbox = [original[0], original[1], Math.max(y, original[0] + 1), Math.max(x, original[1] + 1)];
      }
      changed = true;
      this.setElement(index, "bbox", bbox);
      this.selected = index;
      this.renderBoxes();
    };
    const onUp = (upEvent) => {
      upEvent.stopPropagation();
      this.frame.removeEventListener("pointermove", onMove);
      this.frame.removeEventListener("pointerup", onUp);
      if (changed) {
        this.undoStack.push(before);
        this.lastTyping = null;
        this.commit(true);
      } else if (boxNode) {
        this.select(index);
      }
    };
    // The drag stays with the frame even outside it, so the graph never sees a stray pointerup.
    this.frame.setPointerCapture(event.pointerId);
    this.frame.addEventListener("pointermove", onMove);
    this.frame.addEventListener("pointerup", onUp);
  }

  onKey(event) {
    const inField = event.target !== this.keys && ["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName);
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
      event.preventDefault();
      event.stopPropagation();
      this.undo();
    } else if ((event.key === "Delete" || event.key === "Backspace") && !inField) {
      // Keep the key from the graph (it would delete the node) and remove the selected box instead.
      event.preventDefault();
      event.stopPropagation();
      if (this.elements[this.selected]?.bbox) this.edit(() => this.setElement(this.selected, "bbox", undefined));
    } else if (inField) {
      event.stopPropagation(); // typing belongs to the field, not to the graph's shortcuts
    }
  }

  // -- paste / copy ---------------------------------------------------------------------------------------------
  // The pack's route answers both; when it cannot be reached the problem is shown as a validation problem is.
  async askServer(body) {
    try {
      const response = await api.fetchApi(VALIDATE_ROUTE, { method: "POST", headers: { "Content-Type": "application/json" },
                                                           body: JSON.stringify(body) });
      return await response.json();
    } catch (error) {
      this.problems = [{ path: "$", message: `caption check unavailable (${error})`, hint: "" }];
      this.showProblems();
      return null;
    }
  }

  async paste(text) {
    const answer = await this.askServer({ text, reorder: true });
    if (!answer) return;
    if (!answer.caption || typeof answer.caption !== "object" || Array.isArray(answer.caption)) {
      this.problems = answer.problems ?? [];
      this.showProblems();
      return;
    }
    this.edit(() => { this.state.caption = answer.caption; this.selected = -1; });
  }

  async copy() {
    const answer = await this.askServer({ caption: this.caption });
    if (!answer) return;
    this.copied = answer.canonical;
    try {
      await navigator.clipboard.writeText(answer.canonical);
      this.status.textContent = "Canonical caption copied";
    } catch {
      window.prompt("Copy the caption:", answer.canonical);
    }
  }
}

app.registerExtension({
  name: "ideogram4.reference.captionStudio",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_ID) return;
    injectCss();
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const node = this;
      const stateWidget = node.widgets.find((w) => w.name === "state");
      setWidgetHidden(stateWidget, true);
      if (stateWidget.element) stateWidget.element.style.display = "none";
      const holder = document.createElement("div");
      holder.style.cssText = "width:100%;height:100%";
      const widget = node.addDOMWidget("studio", "ideogram4_caption_studio", holder, {
        serialize: false,
        getMinHeight: () => node.ideogram4Studio?.contentHeight ?? EDITOR_MIN_HEIGHT,
        getMaxHeight: () => node.ideogram4Studio?.contentHeight ?? EDITOR_MIN_HEIGHT,
      });
      widget.serialize = false; // the state widget carries the value
      widget.computeSize = (width) => [width, node.ideogram4Studio?.contentHeight ?? EDITOR_MIN_HEIGHT];
      packOptions().then((options) => {
        if (!options) {
          holder.textContent = "Ideogram 4: the pack's options route did not answer; the editor is unavailable.";
          return;
        }
        node.ideogram4Studio = new CaptionStudio(node, stateWidget, options);
        holder.replaceChildren(node.ideogram4Studio.root);
        node.ideogram4Studio.validate();
      });
      fitNode(node);
      return result;
    };
    // A removed node's editor stops following its content (the observer would keep the node alive).
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.ideogram4Studio?.resizeObserver.disconnect();
      return onRemoved?.apply(this, arguments);
    };
    // A loaded workflow sets the state widget after the node was created: show that state.
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      const studio = this.ideogram4Studio;
      if (studio) {
        studio.undoStack = [];
        studio.load(this.widgets.find((w) => w.name === "state").value);
        studio.validate();
        studio.fitToContent(); // the saved size may predate the content
      } else {
        packOptions().then(() => {
          this.ideogram4Studio?.load(this.widgets.find((w) => w.name === "state").value);
        });
      }
      return result;
    };
    const onResize = nodeType.prototype.onResize;
    nodeType.prototype.onResize = function () {
      const result = onResize?.apply(this, arguments);
      if (this.ideogram4Studio?.frame) {
        this.ideogram4Studio.layoutFrame();
      }
      return result;
    };
  },
});
