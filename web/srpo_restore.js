// SRPO results after a page reload (ComfyUI frontend extension).
//
// ComfyUI's frontend keeps node outputs in the page only: a workflow tab that is switched away
// and back gets them from its change tracker, but a reloaded page restores the workflow (its
// persisted graph) without them, so the trainer's chart, the name of the saved LoRA and the
// Reward Score numbers would be gone although the run finished. The server still has them: every
// finished prompt's ui outputs are in its /history, with the workflow that queued it (its
// extra_pnginfo). After a graph is configured this extension reads the recent history and, for
// the prompts queued from this same workflow (the same workflow id), puts the newest SRPO ui
// outputs of each node back into app.nodeOutputs where the page has none, then redraws; the
// panels (srpo_training.js, srpo_reward_score.js) draw from there as after a tab switch. Outputs
// the page already has are never replaced, and nothing is fetched for a graph without SRPO nodes.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const SRPO_TYPES = ["SRPODirectAlignTrainer", "SRPOSaveLoRA", "SRPORewardScore"];
const SRPO_UI_KEYS = ["srpo_training", "srpo_lora", "srpo_score"];
const HISTORY_ITEMS = 64;
const EXTRA_DATA = 3;

/** The workflow id a history item was queued from (null for prompts queued without one). */
function queuedFrom(item) {
  return item?.prompt?.[EXTRA_DATA]?.extra_pnginfo?.workflow?.id ?? null;
}

/** The SRPO part of one node's ui output, or null when it has none. */
function srpoPart(output) {
  const part = {};
  for (const key of SRPO_UI_KEYS) if (output?.[key] !== undefined) part[key] = output[key];
  return Object.keys(part).length ? part : null;
}

/**
 * Newest SRPO ui output of each node id among the history items queued from ``workflowId``.
 * ``history``: /history's answer (prompt id -> item, oldest first, as the server keeps it).
 */
export function restorableOutputs(history, workflowId) {
  const found = {};
  for (const item of Object.values(history ?? {}).reverse()) {
    if (!workflowId || queuedFrom(item) !== workflowId) continue;
    for (const [nodeId, output] of Object.entries(item?.outputs ?? {})) {
      const part = srpoPart(output);
      if (part && !(nodeId in found)) found[nodeId] = part;
    }
  }
  return found;
}

async function restore() {
  const graph = app.graph;
  const nodes = (graph?.nodes ?? []).filter((n) => SRPO_TYPES.includes(n.type));
  const workflowId = graph?.id ?? null;
  if (!nodes.length || !workflowId) return;
  let history;
  try {
    history = await (await api.fetchApi(`/history?max_items=${HISTORY_ITEMS}`)).json();
  } catch (error) {
    console.warn("SRPO: the run history could not be read", error);
    return;
  }
  if (app.graph !== graph) return; // another workflow was opened meanwhile
  const found = restorableOutputs(history, workflowId);
  const outputs = app.nodeOutputs ?? {};
  let changed = false;
  for (const node of nodes) {
    const id = String(node.id);
    const part = found[id];
    if (!part) continue;
    const have = outputs[id] ?? {};
    const missing = Object.fromEntries(Object.entries(part).filter(([k]) => have[k] === undefined));
    if (!Object.keys(missing).length) continue;
    outputs[id] = { ...have, ...missing };
    changed = true;
  }
  if (!changed) return;
  app.nodeOutputs = outputs;
  graph.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "comfyui-srpo.restore",
  async afterConfigureGraph() {
    await restore();
  },
});
