// Queue and run errors shown in the editor, and results marked stale (ComfyUI frontend extension).
//
// When ComfyUI accepts a prompt only in part (a valid branch runs, the rest has node errors) or
// rejects it, the 1.32 frontend draws a thin red outline and nothing else: the messages reach
// the server console only, and the previous run's images and numbers stay on the nodes. This
// extension shows each node error as a toast and in a red box above its node, naming the input
// ("sigma_max: training interval needs ..."; "reward: Required input is missing"), does the same
// for an error raised while a node runs, and greys out the results of every node that did not
// run (or come from the cache) in the last queue, with "stale: not run in the last queue".
// Nothing here is serialised: workflows and queued prompts are the same without it.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TOAST_LIFE_MS = 20000;
const BOX_PADDING = 6;
const LINE_HEIGHT = 16;
const MAX_LINES = 6;
const FONT = "13px sans-serif";
const COLORS = {
  box: "rgba(120, 20, 20, 0.92)",
  frame: "#ff6b6b",
  text: "#fff",
  stale: "rgba(30, 30, 30, 0.55)",
  staleText: "#ffb347",
};
const STALE_TEXT = "stale: not run in the last queue";

/** One error of ComfyUI's node_errors as "input: what to fix" (the input named first). */
export function errorLine(error) {
  const input = error?.extra_info?.input_name;
  let details = String(error?.details ?? "").trim();
  const message = String(error?.message ?? "").trim();
  if (input && details.startsWith(`${input} - `)) details = details.slice(input.length + 3);
  let text;
  if (error?.type === "custom_validation_failed" && details && details !== input) text = details;
  else if (details && details !== input) text = `${message}: ${details}`;
  else text = message || details || "error";
  return input ? `${input}: ${text}` : text;
}

/** The lines of one node's errors, the same text for several inputs merged into one line. */
export function nodeErrorLines(errors) {
  const byText = new Map();
  for (const error of errors ?? []) {
    const input = error?.extra_info?.input_name;
    const line = errorLine(error);
    const text = input ? line.slice(input.length + 2) : line;
    if (!byText.has(text)) byText.set(text, []);
    if (input) byText.get(text).push(input);
  }
  return [...byText].map(([text, inputs]) => (inputs.length ? `${inputs.join(", ")}: ${text}` : text));
}

function nodeTitle(node, fallback) {
  return node?.title || node?.type || fallback || "node";
}

function toast(summary, detail) {
  const service = app.extensionManager?.toast;
  if (service?.add) service.add({ severity: "error", summary, detail, life: TOAST_LIFE_MS });
  else console.error(`${summary}: ${detail}`);
}

function clearErrors() {
  for (const node of app.graph?.nodes ?? []) node.srpoErrors = null;
}

/** Marks every node that shows results as stale until it runs (or comes from the cache). */
function markStale() {
  const outputs = app.nodeOutputs ?? {};
  for (const node of app.graph?.nodes ?? []) {
    const shows = outputs[String(node.id)] || node.imgs?.length || node.srpoLive?.steps?.length;
    node.srpoStale = Boolean(shows || node.srpoScore);
  }
}

function fresh(id) {
  const node = id == null ? null : app.graph?.getNodeById(id);
  if (node) node.srpoStale = false;
}

/** Shows the node errors of a queue response (whole or partial) on the nodes and as toasts. */
function showNodeErrors(nodeErrors) {
  const entries = Object.entries(nodeErrors ?? {});
  for (const [id, entry] of entries) {
    const node = app.graph?.getNodeById(id);
    const lines = nodeErrorLines(entry.errors);
    if (node) {
      node.srpoErrors = lines;
      node.srpoStale = Boolean(node.srpoStale);
    }
    toast(`${nodeTitle(node, entry.class_type)}: not run`, lines.join("\n"));
  }
  if (entries.length) app.graph?.setDirtyCanvas(true, true);
}

function onQueued(response) {
  showNodeErrors(response?.node_errors);
}

function wrapQueue() {
  const queue = api.queuePrompt.bind(api);
  api.queuePrompt = async function (...args) {
    clearErrors();
    markStale();
    try {
      const response = await queue(...args);
      onQueued(response);
      return response;
    } catch (error) {
      onQueued(error?.response);
      throw error;
    }
  };
}

function onExecutionError({ detail }) {
  const node = app.graph?.getNodeById(detail?.node_id);
  const text = String(detail?.exception_message ?? "error").trim();
  if (node) node.srpoErrors = [text];
  toast(`${nodeTitle(node, detail?.node_type)}: failed`, text);
  app.graph?.setDirtyCanvas(true, true);
}

function wrapLines(ctx, text, width) {
  const lines = [];
  for (const paragraph of String(text).split("\n")) {
    let line = "";
    for (const word of paragraph.split(/\s+/)) {
      const candidate = line ? `${line} ${word}` : word;
      if (ctx.measureText(candidate).width > width && line) {
        lines.push(line);
        line = word;
      } else line = candidate;
    }
    if (line) lines.push(line);
  }
  return lines;
}

/** The red box above the title bar: the node's error lines, wrapped to the node's width. */
function drawErrors(node, ctx) {
  const width = node.size[0];
  ctx.save();
  ctx.font = FONT;
  const lines = node.srpoErrors
    .flatMap((line) => wrapLines(ctx, line, width - 2 * BOX_PADDING))
    .slice(0, MAX_LINES);
  const height = lines.length * LINE_HEIGHT + 2 * BOX_PADDING;
  const top = -(globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30) - height - 4;
  ctx.fillStyle = COLORS.box;
  ctx.strokeStyle = COLORS.frame;
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.roundRect?.(0, top, width, height, 4);
  ctx.fill();
  ctx.stroke();
  ctx.fillStyle = COLORS.text;
  ctx.textBaseline = "top";
  lines.forEach((line, i) => ctx.fillText(line, BOX_PADDING, top + BOX_PADDING + i * LINE_HEIGHT));
  ctx.restore();
}

/** A grey veil over the node's body and the stale caption at its top. */
function drawStale(node, ctx) {
  ctx.save();
  ctx.fillStyle = COLORS.stale;
  ctx.fillRect(0, 0, node.size[0], node.size[1]);
  ctx.font = FONT;
  ctx.fillStyle = COLORS.staleText;
  ctx.textBaseline = "top";
  ctx.fillText(STALE_TEXT, BOX_PADDING, BOX_PADDING);
  ctx.restore();
}

app.registerExtension({
  name: "comfyui-srpo.errors",
  setup() {
    wrapQueue();
    api.addEventListener("execution_error", onExecutionError);
    api.addEventListener("executing", ({ detail }) => fresh(detail?.node ?? detail));
    api.addEventListener("executed", ({ detail }) => fresh(detail?.display_node ?? detail?.node));
    api.addEventListener("execution_cached", ({ detail }) => detail?.nodes?.forEach(fresh));
    api.addEventListener("srpo.training", ({ detail }) => fresh(detail?.node));
  },
  beforeRegisterNodeDef(nodeType) {
    const draw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = draw?.apply(this, arguments);
      if (this.srpoStale && !this.flags?.collapsed) drawStale(this, ctx);
      if (this.srpoErrors?.length) drawErrors(this, ctx);
      return result;
    };
  },
});
