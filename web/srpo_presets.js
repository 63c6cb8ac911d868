// The Training Settings node's preset in the editor (ComfyUI frontend extension).
//
// Picking a preset other than "custom" sets the inputs it names to its values (the server
// applies the same values when the prompt runs, so a prompt queued without this extension trains
// alike); changing one of those inputs afterwards switches the preset back to "custom". The
// presets' values come with the node definition (/object_info, the preset input's srpo_presets).

import { app } from "../../scripts/app.js";

const NODE = "SRPOTrainingSettings";
const PRESET = "preset";
const PRESETS_KEY = "srpo_presets";
const CUSTOM = "custom";

function presetTable(nodeData) {
  const spec = nodeData.input?.required?.[PRESET] ?? nodeData.input?.optional?.[PRESET];
  return (Array.isArray(spec) && spec[1]?.[PRESETS_KEY]) || {};
}

function wire(node, table) {
  const widgets = Object.fromEntries((node.widgets ?? []).map((w) => [w.name, w]));
  const preset = widgets[PRESET];
  if (!preset) return;
  let applying = false;
  const apply = (name) => {
    applying = true;
    for (const [input, value] of Object.entries(table[name] ?? {})) {
      if (widgets[input]) widgets[input].value = value;
    }
    applying = false;
    node.setDirtyCanvas?.(true, true);
  };
  const presetChanged = preset.callback;
  preset.callback = function (value) {
    const result = presetChanged?.apply(this, arguments);
    if (value !== CUSTOM) apply(value);
    return result;
  };
  const named = new Set(Object.values(table).flatMap((values) => Object.keys(values)));
  for (const input of named) {
    const widget = widgets[input];
    if (!widget) continue;
    const changed = widget.callback;
    widget.callback = function (value) {
      const result = changed?.apply(this, arguments);
      const wanted = table[preset.value]?.[input];
      if (!applying && preset.value !== CUSTOM && wanted !== undefined && wanted !== value) {
        preset.value = CUSTOM;
      }
      return result;
    };
  }
}

app.registerExtension({
  name: "comfyui-srpo.presets",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    const table = presetTable(nodeData);
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      wire(this, table);
      return result;
    };
  },
});
