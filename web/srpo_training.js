// Live SRPO training report on the Direct-Align Trainer node (ComfyUI frontend extension).
//
// The trainer (nodes/live.py) sends one "srpo.training" websocket message per optimiser step
// ({node, phase: "step", step, total, loss, reward, reward_pos, reward_neg, ...}), one per
// SRPO Validation ("validation": the validation samples' mean reward) and one when it starts
// ("start"), finishes ("done") or is interrupted ("stopped", with the text to show).
// This extension draws the loss and reward curves on the trainer node, gives the node room for
// ComfyUI's own live preview (sent through the progress bar) at a readable size, and shows the
// "stopped at step N/M, checkpoint ..., Run again resumes" text after an interrupt.
// A resumed run's "start" message carries the losses and rewards of the steps before the resume
// (from the checkpoint), so the chart shows the whole run. Save LoRA (SRPO) sends "saved" with the
// file it wrote; the panel names it. At the end the trainer returns the whole run as its ui
// output (srpo_training): when a workflow tab is reopened the panel redraws from ComfyUI's
// stored node outputs, as stock previews do; after a page reload srpo_restore.js puts them back
// from the server's history first. A run that cannot have changed the
// model (learning rate at its minimum, LoRA unchanged) shows its warning in orange.
// The panel is a canvas widget that is never serialised: workflows and queued prompts are the
// same with or without this extension.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "srpo.training";
const TRAINER = "SRPODirectAlignTrainer";
const PANEL = "srpo_live_report";
const PLOT_HEIGHT = 130;
const TEXT_LINE = 15;
const TEXT_LINES = 3;
const UI_KEY = "srpo_training";
const SAVED_UI_KEY = "srpo_lora";
const LORA_OUTPUT = 1;
const PANEL_HEIGHT = PLOT_HEIGHT + TEXT_LINE * TEXT_LINES + 12;
const MARGIN = 10;
const PREVIEW_MIN_HEIGHT = 256;
const MIN_WIDTH = 400;
const COLORS = {
  loss: "#ff6b6b",
  reward: "#5fd068",
  validation: "#6bb8ff",
  frame: "#555",
  text: "#ddd",
  stop: "#ffb347",
};

/** State of the last run of one trainer node: the series and the status line. */
function emptyRun() {
  return {
    steps: [],
    loss: [],
    reward: [],
    validationSteps: [],
    validation: [],
    total: 0,
    phase: "idle",
    text: "",
    checkpoint: null,
    warnings: [],
    saved: null,
  };
}

/** The run as the trainer's stored ui output (srpo_training) describes it, or null. */
function storedRun(node) {
  const stored = app.nodeOutputs?.[String(node.id)]?.[UI_KEY]?.[0];
  if (!stored) return null;
  const num = (values) => (values ?? []).map((v) => (typeof v === "number" ? v : Number.NaN));
  return {
    ...emptyRun(),
    ...stored,
    loss: num(stored.loss),
    reward: num(stored.reward),
    validation: num(stored.validation),
    warnings: stored.warnings ?? [],
    saved: null,
  };
}

/** The file the Save LoRA (SRPO) fed by this trainer wrote, from its stored output. */
function savedFile(node) {
  const links = node.outputs?.[LORA_OUTPUT]?.links ?? [];
  for (const id of links) {
    const link = app.graph?.links?.[id] ?? app.graph?.links?.get?.(id);
    const file = link && app.nodeOutputs?.[String(link.target_id)]?.[SAVED_UI_KEY]?.[0]?.file;
    if (file) return file;
  }
  return null;
}

/** What the panel shows: the live run, else the stored outputs of the last run. */
function shownRun(node) {
  const live = node.srpoLive;
  const run = live && (live.steps.length || live.text) ? live : storedRun(node) ?? live ?? emptyRun();
  return { ...run, saved: run.saved ?? savedFile(node) };
}

function finite(values) {
  return values.filter((v) => typeof v === "number" && Number.isFinite(v));
}

/** Draws one series scaled to its own range into the box (x0, y0, w, h). */
function drawSeries(ctx, steps, values, total, box, color) {
  const points = steps.map((s, i) => [s, values[i]]).filter(([, v]) => Number.isFinite(v));
  if (points.length === 0) return null;
  const ys = points.map(([, v]) => v);
  let lo = Math.min(...ys);
  let hi = Math.max(...ys);
  if (hi - lo < 1e-9) {
    lo -= 0.5;
    hi += 0.5;
  }
  const last = Math.max(total, steps[steps.length - 1], 1);
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.beginPath();
  points.forEach(([s, v], i) => {
    const x = box.x + (box.w * (s - 1)) / Math.max(last - 1, 1);
    const y = box.y + box.h - (box.h * (v - lo)) / (hi - lo);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
  if (points.length === 1) {
    const [s, v] = points[0];
    const x = box.x + (box.w * (s - 1)) / Math.max(last - 1, 1);
    const y = box.y + box.h - (box.h * (v - lo)) / (hi - lo);
    ctx.fillStyle = color;
    ctx.fillRect(x - 2, y - 2, 4, 4);
  }
  return { lo, hi, last: ys[ys.length - 1] };
}

function wrap(ctx, text, width) {
  const lines = [];
  let line = "";
  for (const word of text.split(/\s+/)) {
    const candidate = line ? `${line} ${word}` : word;
    if (ctx.measureText(candidate).width > width && line) {
      lines.push(line);
      line = word;
    } else {
      line = candidate;
    }
  }
  if (line) lines.push(line);
  return lines;
}

function statusText(run) {
  if (run.text) return run.text;
  if (run.steps.length === 0) return "SRPO: loss and reward curves appear here while training.";
  const i = run.steps.length - 1;
  const fmt = (v) => (Number.isFinite(v) ? v.toFixed(4) : "n/a");
  return `step ${run.steps[i]}/${run.total}   loss ${fmt(run.loss[i])}   reward ${fmt(run.reward[i])}`;
}

function drawPanel(ctx, run, width, y) {
  const box = { x: MARGIN, y: y + 4, w: width - 2 * MARGIN, h: PLOT_HEIGHT };
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.35)";
  ctx.fillRect(box.x, box.y, box.w, box.h);
  ctx.strokeStyle = COLORS.frame;
  ctx.lineWidth = 1;
  ctx.strokeRect(box.x, box.y, box.w, box.h);
  const inner = { x: box.x + 4, y: box.y + 18, w: box.w - 8, h: box.h - 24 };
  const loss = drawSeries(ctx, run.steps, run.loss, run.total, inner, COLORS.loss);
  const reward = drawSeries(ctx, run.steps, run.reward, run.total, inner, COLORS.reward);
  const validation = drawSeries(
    ctx, run.validationSteps, run.validation, run.total, inner, COLORS.validation
  );
  ctx.font = "12px sans-serif";
  ctx.textBaseline = "top";
  ctx.fillStyle = COLORS.loss;
  const range = (r) => (r ? ` ${r.last.toFixed(4)}  [${r.lo.toFixed(3)}, ${r.hi.toFixed(3)}]` : "");
  ctx.fillText(`loss${range(loss)}`, box.x + 6, box.y + 3);
  ctx.fillStyle = COLORS.reward;
  const rewardLabel = `reward${range(reward)}`;
  ctx.fillText(rewardLabel, box.x + box.w - 6 - ctx.measureText(rewardLabel).width, box.y + 3);
  if (validation) {
    ctx.fillStyle = COLORS.validation;
    const label = `validation ${validation.last.toFixed(4)}`;
    ctx.fillText(label, box.x + box.w - 6 - ctx.measureText(label).width, box.y + box.h - 15);
  }
  const warned = run.phase === "stopped" || run.warnings?.length;
  ctx.fillStyle = warned ? COLORS.stop : COLORS.text;
  const saved = run.saved ? `LoRA: output/loras/${run.saved}` : "";
  const text = [statusText(run), ...(run.warnings ?? []).map((w) => `WARNING ${w}`)].join(" ");
  const lines = wrap(ctx, text, box.w).slice(0, saved ? TEXT_LINES - 1 : TEXT_LINES);
  if (saved) lines.push(...wrap(ctx, saved, box.w).slice(0, 1));
  lines.forEach((line, i) => ctx.fillText(line, box.x, box.y + box.h + 6 + i * TEXT_LINE));
  ctx.restore();
}

function panelWidget(node) {
  return {
    name: PANEL,
    type: "srpo_live_report",
    value: "",
    serialize: false,
    options: { serialize: false },
    draw(ctx, _node, width, y) {
      keepPreviewRoom(node);
      drawPanel(ctx, shownRun(node), width, y);
    },
    computeSize(width) {
      return [width, PANEL_HEIGHT];
    },
    /** The run the panel shows now (live, else stored): for tests. */
    shown() {
      return shownRun(node);
    },
    computeLayoutSize() {
      return { minHeight: PANEL_HEIGHT, maxHeight: PANEL_HEIGHT, minWidth: MIN_WIDTH };
    },
  };
}

/** Adds the panel once and grows the node so that panel and preview fit below the widgets. */
function ensurePanel(node) {
  node.srpoLive ??= emptyRun();
  if (!node.widgets?.some((w) => w.name === PANEL)) {
    node.addCustomWidget(panelWidget(node));
  }
  const [minWidth, minHeight] = node.computeSize();
  const width = Math.max(node.size[0], minWidth, MIN_WIDTH);
  const previewShown = node.widgets.some((w) => w.name?.includes("image-preview"));
  const height = Math.max(node.size[1], minHeight + (previewShown ? 0 : PREVIEW_MIN_HEIGHT));
  if (width !== node.size[0] || height !== node.size[1]) node.setSize([width, height]);
}

/**
 * Grows the node when its preview is shorter than PREVIEW_MIN_HEIGHT. The frontend gives the
 * preview and any other growable widget (the progress-text box that a node text such as the
 * memory plan adds) their minimums and splits the space left over evenly between them, so each
 * of them gets the missing height.
 */
function keepPreviewRoom(node) {
  const widgets = node.widgets ?? [];
  const preview = widgets.find((w) => w.name?.includes("image-preview"));
  const shown = preview?.computedHeight;
  if (!shown || shown >= PREVIEW_MIN_HEIGHT) return;
  const growable = widgets.filter((w) => !w.computeSize && w.computeLayoutSize).length;
  const missing = (PREVIEW_MIN_HEIGHT - shown) * Math.max(1, growable);
  node.setSize([node.size[0], node.size[1] + missing]);
  node.setDirtyCanvas(true, true);
}

function onTraining(event) {
  const data = event.detail;
  const node = app.graph?.getNodeById(data.node);
  if (!node || node.comfyClass !== TRAINER) return;
  ensurePanel(node);
  const run = node.srpoLive;
  if (data.phase === "start") {
    Object.assign(run, emptyRun(), { total: data.total, phase: "running" });
    const loss = data.history?.loss ?? [];
    const reward = data.history?.reward ?? [];
    run.steps = loss.map((_, i) => i + 1);
    run.loss = loss.map((v) => v ?? Number.NaN);
    run.reward = loss.map((_, i) => reward[i] ?? Number.NaN);
    app.canvas?.bringToFront(node); // the panel and the preview are drawn over any neighbour
  } else if (data.phase === "step") {
    run.total = data.total;
    run.phase = "running";
    run.text = "";
    const kept = run.steps.findIndex((s) => s >= data.step);
    if (kept >= 0) {
      for (const key of ["steps", "loss", "reward"]) run[key].length = kept;
    }
    run.steps.push(data.step);
    run.loss.push(data.loss ?? Number.NaN);
    run.reward.push(data.reward ?? Number.NaN);
  } else if (data.phase === "validation") {
    run.validationSteps.push(data.step);
    run.validation.push(data.reward ?? Number.NaN);
  } else if (data.phase === "saved") {
    run.saved = data.file;
  } else {
    Object.assign(run, { phase: data.phase, text: data.text, checkpoint: data.checkpoint });
    run.warnings = data.warnings ?? [];
  }
  app.graph.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "comfyui-srpo.trainingReport",
  setup() {
    api.addEventListener(EVENT, onTraining);
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== TRAINER) return;
    // A reopened tab or a reloaded page: stored outputs but no panel yet.
    const draw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function () {
      const result = draw?.apply(this, arguments);
      if (!this.widgets?.some((w) => w.name === PANEL) && storedRun(this)) ensurePanel(this);
      return result;
    };
  },
});
