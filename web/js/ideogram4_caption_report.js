// Shows the caption check of "Ideogram 4 Text Encode (reference)" on the node itself.
// The node returns its report as the UI output `text` (a list of strings); an empty run clears it.
import { app } from "../../scripts/app.js";

const NODE_ID = "Ideogram4RefTextEncode";
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
    if (nodeData?.name !== NODE_ID) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const lines = output?.text ?? [];
      const widget = reportWidget(this);
      widget.area.value = lines.join("\n");
      this.setDirtyCanvas?.(true, true);
    };
  },
});
