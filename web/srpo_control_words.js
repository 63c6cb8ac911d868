// Which word box is which on the Control-Word Reward (ComfyUI frontend extension).
//
// The 1.32 frontend draws a multiline text box without its input's name, so the node did not say
// which box holds the rewarded words and which the penalised ones. This extension colours the
// boxes' left edges (green: positive, red: negative), gives them placeholders and hover titles,
// and adds a two-line legend at the bottom of the node saying so. The legend is appended after
// the inputs' widgets and never serialised (the frontend stores widget values by position), so
// workflows and queued prompts are the same without it.

import { app } from "../../scripts/app.js";

const NODE = "SRPOControlWordReward";
const LINE_HEIGHT = 18;
const LEGEND_HEIGHT = 2 * LINE_HEIGHT;
const FONT = "bold 12px sans-serif";
const BOXES = {
  positive_words: { text: "green box: positive words, rewarded", color: "#5fd068" },
  negative_words: { text: "red box: negative words, penalised", color: "#ff6b6b" },
};

function legendWidget() {
  return {
    name: "srpo_words_legend",
    type: "srpo_legend",
    value: "",
    serialize: false,
    options: { serialize: false },
    draw(ctx, _node, _width, y) {
      ctx.save();
      ctx.font = FONT;
      ctx.textBaseline = "middle";
      Object.values(BOXES).forEach(({ text, color }, i) => {
        ctx.fillStyle = color;
        ctx.fillRect(14, y + i * LINE_HEIGHT + 4, 4, LINE_HEIGHT - 8);
        ctx.fillText(text, 24, y + (i + 0.5) * LINE_HEIGHT);
      });
      ctx.restore();
    },
    computeSize(width) {
      return [width, LEGEND_HEIGHT];
    },
    computeLayoutSize() {
      return { minHeight: LEGEND_HEIGHT, maxHeight: LEGEND_HEIGHT, minWidth: 0 };
    },
  };
}

app.registerExtension({
  name: "comfyui-srpo.controlWords",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      for (const [name, { text, color }] of Object.entries(BOXES)) {
        const box = this.widgets?.find((w) => w.name === name);
        const element = box?.inputEl ?? box?.element;
        if (!element?.style) continue;
        element.style.borderLeft = `4px solid ${color}`;
        element.placeholder = text;
        element.title = text;
      }
      this.addCustomWidget(legendWidget());
      return result;
    };
  },
});
