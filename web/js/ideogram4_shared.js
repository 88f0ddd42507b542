// What the pack's web extensions share: the app and api objects, and the pack's options route (frame sizes,
// known style values, sampler presets; answered by nodes/caption_route.py, so the values have one source).
// Served as /extensions/<pack folder>/js/ideogram4_shared.js: three levels up is the site root.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

export { app, api };

let optionsPromise = null;

export function packOptions() {
  optionsPromise ??= api
    .fetchApi("/ideogram4_ref/options")
    .then((response) => (response.ok ? response.json() : Promise.reject(new Error(`HTTP ${response.status}`))))
    .catch((error) => {
      optionsPromise = null;
      console.warn("[Ideogram 4] options route unavailable:", error);
      return null;
    });
  return optionsPromise;
}

// Hide or show a widget on both frontends (1.2x: computeSize [0, -4]; newer: the `hidden` flag).
export function setWidgetHidden(widget, hidden) {
  if (!widget || Boolean(widget.ideogram4Hidden) === hidden) return;
  widget.ideogram4Hidden = hidden;
  widget.hidden = hidden;
  // DOM widgets (a multiline text box) are laid out by computeLayoutSize on frontends 1.2x, which ignores the flag.
  if (hidden) {
    widget.ideogram4ComputeSize = widget.computeSize;
    widget.computeSize = () => [0, -4];
    if (widget.computeLayoutSize) {
      widget.ideogram4ComputeLayoutSize = widget.computeLayoutSize;
      widget.computeLayoutSize = () => ({ minHeight: 0, maxHeight: 0, minWidth: 0 });
    }
  } else {
    widget.computeSize = widget.ideogram4ComputeSize;
    delete widget.ideogram4ComputeSize;
    if (widget.ideogram4ComputeLayoutSize) {
      widget.computeLayoutSize = widget.ideogram4ComputeLayoutSize;
      delete widget.ideogram4ComputeLayoutSize;
    }
  }
}

// Resize the node to fit its widgets, never narrower or shorter than the user made it wider.
export function fitNode(node, { shrink = false } = {}) {
  const wanted = node.computeSize();
  const width = Math.max(node.size[0], wanted[0]);
  const height = shrink ? wanted[1] : Math.max(node.size[1], wanted[1]);
  node.setSize([width, height]);
  node.setDirtyCanvas?.(true, true);
}
