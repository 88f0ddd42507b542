// Shows a node's report on the node itself: the caption check of "Ideogram 4 Text Encode (reference)", and the
// notes of the DiT Loader (file pairing), Sampler and Guider (inputs a preset ignores).
// Each node returns its report as the UI output `text` (a list of strings); an empty report clears the widget.
// The node grows by the report's height, so its other widgets keep their space.
import { app, fitNode } from "./ideogram4_shared.js";

const NODE_IDS = new Set(["Ideogram4RefTextEncode", "Ideogram4RefDiTLoader", "Ideogram4RefSampler",
                          "Ideogram4RefGuider"]);
const WIDGET_NAME = "caption_check";
const REPORT_HEIGHT = 90;

function reportWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET_NAME);
  if (!widget) {
    // ComfyWidgets.STRING is not exported on every frontend; a plain DOM textarea works on all of them.
    const area = document.createElement("textarea");
    area.readOnly = true;
    area.className = "comfy-multiline-input ideogram4-caption-report";
    area.style.opacity = "0.85";
    area.style.fontSize = "11px";
    widget = node.addDOMWidget(WIDGET_NAME, "customtext", area, {
      serialize: false,
      getMinHeight: () => REPORT_HEIGHT,
      getMaxHeight: () => REPORT_HEIGHT,
    });
    widget.computeSize = (width) => [width, REPORT_HEIGHT];
    widget.serialize = false; // not part of the workflow (the option alone is not read by every frontend)
    widget.area = area;
    // The node grows by the report's height, so the prompt keeps its space.
    node.setSize([node.size[0], node.size[1] + REPORT_HEIGHT + 10]);
  }
  return widget;
}

app.registerExtension({
  name: "ideogram4.reference.captionReport",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_IDS.has(nodeData?.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const text = (output?.text ?? []).join("\n");
      const existing = this.widgets?.find((w) => w.name === WIDGET_NAME);
      if (!text && !existing) return; // nothing to say: no empty box on nodes that have no note
      reportWidget(this).area.value = text;
      fitNode(this);
    };
  },
});
