// The mean score of Reward Score (SRPO) drawn large on the node (ComfyUI frontend extension).
//
// SRPORewardScore (nodes/rewards.py) returns ui.srpo_score = [{mean, min, max, count, positive,
// negative, mode}] next to its text table. This extension gives the node a read-only display
// at the bottom that shows the mean in a large font (the control words are the widgets above
// it), so the before and after numbers of a workflow read at fit zoom beside their samples.
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

function displayWidget(node) {
  return {
    name: DISPLAY,
    type: "srpo_score_display",
    value: "",
    serialize: false,
    options: { serialize: false },
    draw(ctx, _node, width, y) {
      const [number, caption] = content(node.srpoScore);
      const box = { x: MARGIN, y: y + 2, w: width - 2 * MARGIN, h: DISPLAY_HEIGHT - 4 };
      ctx.save();
      ctx.fillStyle = COLORS.box;
      ctx.fillRect(box.x, box.y, box.w, box.h);
      ctx.strokeStyle = COLORS.frame;
      ctx.lineWidth = 1;
      ctx.strokeRect(box.x, box.y, box.w, box.h);
      ctx.textBaseline = "middle";
      ctx.font = NUMBER_FONT;
      ctx.fillStyle = node.srpoScore ? COLORS.number : COLORS.text;
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
        this.setDirtyCanvas(true, true);
      }
    };
  },
});
