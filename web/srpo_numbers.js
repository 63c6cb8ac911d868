// Decimal inputs of the SRPO nodes shown as typed (ComfyUI frontend extension).
//
// The 1.32 frontend draws a FLOAT widget with toFixed(precision), precision taken from the
// input's step: a learning rate of 3e-4 reads "0.000300" and one of 5e-7 is rounded to the step
// when typed. On the pack's nodes this extension draws the value in its shortest exact form
// (3e-4 reads 0.0003, 1e-8 reads 1e-8), keeps a typed value unrounded, and marks a learning rate
// at the input's minimum (a typed 0 becomes it) as one that trains nothing. Values, workflows and
// queued prompts are unchanged.

import { app } from "../../scripts/app.js";

const PACK_PREFIX = "SRPO";
const SIGNIFICANT_DIGITS = 6;
const LEARNING_RATE = "learning_rate";
const AT_MINIMUM = "  (minimum: trains nothing)";

/** ``value`` with at most SIGNIFICANT_DIGITS significant digits, no trailing zeros. */
export function compact(value) {
  const v = Number(value);
  if (!Number.isFinite(v)) return String(value);
  return String(Number(v.toPrecision(SIGNIFICANT_DIGITS)));
}

function floatInputs(nodeData) {
  const names = new Set();
  for (const section of ["required", "optional"]) {
    for (const [name, spec] of Object.entries(nodeData.input?.[section] ?? {})) {
      if (Array.isArray(spec) && spec[0] === "FLOAT") names.add(name);
    }
  }
  return names;
}

function showAsTyped(widget) {
  widget.options.round = 0; // the frontend rounds a typed value to `round` when it is set
  Object.defineProperty(widget, "_displayValue", {
    configurable: true,
    get() {
      if (this.computedDisabled) return "";
      const text = compact(this.value);
      const min = this.options?.min;
      const low = this.name === LEARNING_RATE && min != null && Number(this.value) <= min;
      return low ? `${text}${AT_MINIMUM}` : text;
    },
  });
}

app.registerExtension({
  name: "comfyui-srpo.numbers",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData.name).startsWith(PACK_PREFIX)) return;
    const floats = floatInputs(nodeData);
    if (!floats.size) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      for (const widget of this.widgets ?? []) {
        if (floats.has(widget.name) && widget.type === "number") showAsTyped(widget);
      }
      return result;
    };
  },
});
