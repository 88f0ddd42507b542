// Sampler, Scheduler and Guider: while an official preset is chosen, the inputs only "Custom" uses are hidden;
// choosing Custom shows them again, holding the last preset's values (from the pack's options route).
import { app, fitNode, packOptions, setWidgetHidden } from "./ideogram4_shared.js";

const NODE_IDS = new Set(["Ideogram4RefSampler", "Ideogram4RefScheduler", "Ideogram4RefGuider"]);
const CUSTOM_ONLY = ["steps", "mu", "std", "guidance_schedule"];

function applyPreset(node, options, presetName) {
  const preset = options.presets[presetName];
  const widgets = CUSTOM_ONLY.map((name) => node.widgets?.find((w) => w.name === name)).filter(Boolean);
  if (preset) {
    for (const widget of widgets) widget.value = preset[widget.name];
  }
  // A widget converted to an input socket stays as it is: it is fed by a link.
  for (const widget of widgets) setWidgetHidden(widget, Boolean(preset));
  fitNode(node, { shrink: true });
}

app.registerExtension({
  name: "ideogram4.reference.samplerPresets",
  async nodeCreated(node) {
    if (!NODE_IDS.has(node.comfyClass)) return;
    const options = await packOptions();
    const presetWidget = node.widgets?.find((w) => w.name === "preset");
    if (!options || !presetWidget) return;
    const callback = presetWidget.callback;
    presetWidget.callback = function (value) {
      const result = callback?.apply(this, arguments);
      applyPreset(node, options, value ?? presetWidget.value);
      return result;
    };
    // Widget values of a loaded workflow are set after nodeCreated: apply once they are in place.
    requestAnimationFrame(() => applyPreset(node, options, presetWidget.value));
  },
  loadedGraphNode(node) {
    if (!NODE_IDS.has(node.comfyClass)) return;
    packOptions().then((options) => {
      const presetWidget = node.widgets?.find((w) => w.name === "preset");
      if (options && presetWidget) applyPreset(node, options, presetWidget.value);
    });
  },
});
