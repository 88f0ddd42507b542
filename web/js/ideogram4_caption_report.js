// Shows a node's report on the node itself: the caption check of "Ideogram 4 Text Encode (reference)", and the
// notes of the DiT Loader (file pairing), Sampler and Guider (inputs a preset ignores).
// Each node returns its report as the UI output `text` (a list of strings); an empty report clears the widget.
import { app } from "../../scripts/app.js";

const NODE_IDS = new Set(["Ideogram4RefTextEncode", "Ideogram4RefDiTLoader", "Ideogram4RefSampler",
                          "Ideogram4RefGuider"]);
const WIDGET_NAME = "caption_check";

function reportWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET_NAME);
  if (!widget) {
    // ComfyWidgets.STRING is not exported on every frontend; a plain DOM textarea works on all of them.
    const area = document.createElement("textarea");
    area.readOnly = true;
    area.style.opacity = "0.8";
    area.style.fontSize = "11px";
    widget = node.addDOMWidget(WIDGET_NAME, "customtext", area, { serialize: false });
    widget.area = area;
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
      this.setDirtyCanvas?.(true, true);
    };
  },
});
