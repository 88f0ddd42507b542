// Shows the caption check of "Ideogram 4 Text Encode (reference)" on the node itself.
// The node returns its report as the UI output `text` (a list of strings); every run replaces it.
import { app, fitNode } from "./ideogram4_shared.js";

const NODE_ID = "Ideogram4RefTextEncode";
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
    if (nodeData?.name !== NODE_ID) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const lines = output?.text ?? [];
      const widget = reportWidget(this);
      widget.area.value = lines.join("\n");
      fitNode(this);
    };
  },
});
