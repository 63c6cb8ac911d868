// The mean score of Reward Score (SRPO) drawn large on the node (ComfyUI frontend extension).
//
// SRPORewardScore (nodes/rewards.py) returns ui.srpo_score = [{mean, min, max, count, positive,
// negative, mode}] next to its text table. This extension gives the node a read-only display
// at the bottom that shows the mean in a large font (the control words are the widgets above
// it), so the before and after numbers of a workflow read at fit zoom beside their samples.
// After a tab switch or a page reload the node is new: the display then reads the score from
// ComfyUI's stored node outputs (app.nodeOutputs), as stock previews do (after a reload
// srpo_restore.js puts them back from the server's history); the extension files
// each score under the open workflow itself as well (see remember).
// The display is never serialised: workflows and queued prompts are the same without it.

import { app } from "../../scripts/app.js";

const NODE = "SRPORewardScore";
const DISPLAY = "srpo_score_display";
const UI_KEY = "srpo_score";
const DISPLAY_HEIGHT = 40;
const MARGIN = 10;
const NUMBER_FONT = "bold 22px sans-serif";
const CAPTION_FONT = "11px sans-serif";
const COLORS = { box: "rgba(0,0,0,0.35)", frame: "#555", number: "#5fd068", text: "#bbb" };

function fmt(v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return "n/a";
  return `${v >= 0 ? "+" : ""}${v.toFixed(4)}`;
}

/** The number (or a dash before any run) and its caption. */
function content(score) {
  if (!score) return ["-", "mean reward: after a run"];
  return [fmt(score.mean), `mean of ${score.count} (${score.mode})`];
}

/** The score to show: the last one this node received, else its stored output. */
function shownScore(node) {
  return node.srpoScore ?? app.nodeOutputs?.[String(node.id)]?.[UI_KEY]?.[0] ?? null;
}

/**
 * Files the output under the open workflow too. ComfyUI keeps a tab's outputs (restored on a
 * tab switch) only for "executed" messages of a prompt whose POST /prompt answer it has already
 * handled; a cached Reward Score reports at once when the prompt starts, and on a busy machine
 * that message can come first, so the score would be gone after a tab switch.
 */
function remember(node, output) {
  const tracker = app.extensionManager?.workflow?.activeWorkflow?.changeTracker;
  if (!tracker || node.graph !== app.graph) return;
  tracker.nodeOutputs ??= {};
  tracker.nodeOutputs[String(node.id)] = output;
}

function displayWidget(node) {
  return {
    name: DISPLAY,
    type: "srpo_score_display",
    value: "",
    serialize: false,
    options: { serialize: false },
    draw(ctx, _node, width, y) {
      const score = shownScore(node);
      const [number, caption] = content(score);
      const box = { x: MARGIN, y: y + 2, w: width - 2 * MARGIN, h: DISPLAY_HEIGHT - 4 };
      ctx.save();
      ctx.fillStyle = COLORS.box;
      ctx.fillRect(box.x, box.y, box.w, box.h);
      ctx.strokeStyle = COLORS.frame;
      ctx.lineWidth = 1;
      ctx.strokeRect(box.x, box.y, box.w, box.h);
      ctx.textBaseline = "middle";
      ctx.font = NUMBER_FONT;
      ctx.fillStyle = score ? COLORS.number : COLORS.text;
      ctx.fillText(number, box.x + 8, box.y + box.h / 2);
      const right = box.x + 16 + ctx.measureText(number).width;
      ctx.font = CAPTION_FONT;
      ctx.fillStyle = COLORS.text;
      const room = box.x + box.w - 8 - right;
      if (ctx.measureText(caption).width <= room) {
        ctx.textAlign = "right";
        ctx.fillText(caption, box.x + box.w - 8, box.y + box.h / 2);
      }
      ctx.restore();
    },
    computeSize(width) {
      return [width, DISPLAY_HEIGHT];
    },
    /** What the display shows now ([number, caption]): for tests and tooltips. */
    shown() {
      return content(shownScore(node));
    },
  };
}

app.registerExtension({
  name: "comfyui-srpo.rewardScore",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      this.srpoScore = null;
      this.addCustomWidget(displayWidget(this));
      return result;
    };
    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      executed?.apply(this, arguments);
      const score = output?.[UI_KEY]?.[0];
      if (score) {
        this.srpoScore = score;
        remember(this, output);
        this.setDirtyCanvas(true, true);
      }
    };
  },
});
