// ComfyUI-MemoRa frontend extension "memora.ui": makes long runs legible (see js/README.md).
//
// - Train MemoRa LoRA: a live loss curve, drawn by a canvas widget from the "memora.loss" websocket events that
//   NodeProgress (nodes/common.py) sends; cleared when the node starts running again, kept after the run.
// - Detect Concept / Evaluate Prompt Set: the success rate as a coloured bar widget and a title badge, and the
//   node's result text in a read-only text box, from the node's "executed" output.
// - The per-step progress text ("train 120/500 · loss 0.0123 · 4.1 it/s · ETA 0:29") needs no code here: the
//   backend sends it with PromptServer.send_progress_text and ComfyUI's frontend shows it on the node.
//
// Only the public extension API is used (app.registerExtension, api events, node prototype callbacks,
// addCustomWidget / addDOMWidget), every optional piece is feature-detected, and every callback is guarded so a
// failure here never breaks the graph or floods the console.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  downsample, ema, formatLoss, formatPercent, lossRange, mergePoints, outputText, parseProgressText,
  parseSuccessRate, rateColor,
} from "./memora_format.js";

const EXTENSION = "memora.ui";
const TRAIN_NODE = "MemoRaTrainLoRA";
const RATE_NODES = new Set(["MemoRaDetectConcept", "MemoRaEvaluatePromptSet"]);
const LOSS_EVENT = "memora.loss"; // NodeProgress.LOSS_EVENT
const CURVE_WIDGET = "memora_loss_curve";
const RATE_WIDGET = "memora_success_rate";
const TEXT_WIDGET = "memora_result_text";
const CURVE_HEIGHT = 100;
const RATE_HEIGHT = 26;
const MARGIN = 15; // litegraph's widget side margin

/** node -> {points: [[step, loss]], total, phase, promptId, running, source: "event" | "text" | null} */
const lossState = new WeakMap();
/** node -> {rate, positives, total, text, stale} */
const rateState = new WeakMap();
/** Nodes shown as running (a Train curve, a dimmed rate), so that an interrupted / failed run can end them. */
const runningNodes = new Set();

// ------------------------------------------------------------------------------------------------ plumbing
const warned = new Set();
function warnOnce(where, error) {
  if (warned.has(where)) return;
  warned.add(where);
  try {
    console.warn(`[${EXTENSION}] ${where}:`, error);
  } catch {
    /* no console */
  }
}

/** Wrap a callback so that it can never throw into ComfyUI. */
function guarded(where, fn) {
  return function guardedCallback(...args) {
    try {
      return fn.apply(this, args);
    } catch (error) {
      warnOnce(where, error);
      return undefined;
    }
  };
}

/** Chain `fn` after the prototype's own `name` callback (the original's result is returned). */
function chainCallback(proto, name, fn) {
  if (!proto) return;
  const original = proto[name];
  const after = guarded(`${name}`, fn);
  proto[name] = function chained(...args) {
    const result = typeof original === "function" ? original.apply(this, args) : undefined;
    after.apply(this, args);
    return result;
  };
}

function nodeClass(node) {
  return node?.comfyClass ?? node?.constructor?.comfyClass ?? node?.type ?? null;
}

/** An execution id ("12", or "4:12" inside subgraph node 4) -> the node in the loaded graph, or null. */
function nodeByExecutionId(id) {
  if (id == null || typeof id === "object") return null;
  let graph = app?.graph ?? null; // (app.rootGraph logs an error when read before the graph exists)
  let node = null;
  for (const part of String(id).split(":")) {
    if (!graph || typeof graph.getNodeById !== "function") return null;
    node = graph.getNodeById(part) ?? (/^\d+$/.test(part) ? graph.getNodeById(Number(part)) : null) ?? null;
    if (!node) return null;
    graph = node.subgraph ?? null;
  }
  return node;
}

function redraw(node) {
  for (const widget of node?.widgets ?? []) {
    if (widget?.name === CURVE_WIDGET || widget?.name === RATE_WIDGET) widget.triggerDraw?.(); // (Nodes 2.0)
  }
  if (typeof node?.setDirtyCanvas === "function") node.setDirtyCanvas(true, false);
  else app?.graph?.setDirtyCanvas?.(true, false);
}

/** Grow the node (never shrink it) so that widgets added after its creation fit. */
function fitHeight(node) {
  if (typeof node?.computeSize !== "function" || !(node.size?.length >= 2)) return;
  const min = node.computeSize();
  if (!min || !(min[1] > node.size[1])) return;
  const size = [node.size[0], min[1]];
  if (typeof node.setSize === "function") node.setSize(size);
  else node.size = size;
}

/** Where a panel widget draws: the node's width less the margins, 2 px inside its row; null when too narrow. */
function panelBox(width, y, height) {
  const box = { x0: MARGIN, w: width - 2 * MARGIN, top: y + 2, h: height - 4 };
  return box.w > 30 ? box : null;
}

function roundedRect(ctx, x, y, w, h, r) {
  ctx.beginPath();
  if (typeof ctx.roundRect === "function") ctx.roundRect(x, y, w, h, r);
  else ctx.rect(x, y, w, h);
}

/** Run `fn` between ctx.save() and ctx.restore(), even when it throws (so the canvas state stays balanced). */
function withContext(ctx, fn) {
  if (!ctx || typeof ctx.save !== "function") return;
  ctx.save();
  try {
    fn();
  } finally {
    ctx.restore();
  }
}

function widgetOutline() {
  return globalThis.LiteGraph?.WIDGET_OUTLINE_COLOR ?? "#666";
}

/** A canvas-drawn widget: not saved in the workflow, not sent in the prompt. */
function addCanvasWidget(node, name, height, draw) {
  if (typeof node?.addCustomWidget !== "function") return null;
  if (node.widgets?.some((w) => w?.name === name)) return null;
  const widget = {
    name,
    type: `memora.${name}`,
    value: "",
    serialize: false,
    options: { serialize: false },
    computeSize(width) {
      return [width ?? node.size?.[0] ?? 200, height];
    },
    draw: guarded(`draw ${name}`, function drawWidget(ctx, drawnNode, width, y) {
      withContext(ctx, () => draw(ctx, drawnNode ?? node, width, y, height));
    }),
    serializeValue() {
      return undefined;
    },
  };
  return node.addCustomWidget(widget) ?? widget;
}

// ------------------------------------------------------------------------------------------- loss curve
function freshLossState() {
  return { points: [], total: null, phase: null, promptId: null, running: true, source: null };
}

function drawLossCurve(ctx, node, width, y, height) {
  const st = lossState.get(node);
  const box = panelBox(width, y, height);
  if (!box) return;
  const { x0, w, top, h } = box;
  ctx.save();
  roundedRect(ctx, x0, top, w, h, 6);
  ctx.fillStyle = "rgba(0, 0, 0, 0.25)";
  ctx.fill();
  ctx.strokeStyle = widgetOutline();
  ctx.lineWidth = 1;
  ctx.stroke();
  ctx.font = "10px sans-serif";
  const points = st?.points ?? [];
  if (!points.length) {
    ctx.fillStyle = "#888";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    const message = st?.running ? "loss curve: waiting for the first update…" : "loss curve (drawn while training)";
    ctx.fillText(message, x0 + w / 2, top + h / 2, w - 8);
    ctx.restore();
    return;
  }

  const last = points[points.length - 1];
  const range = lossRange(points);
  const smooth = points.length >= 8 ? ema(points.map((p) => p[1]), 0.1) : null;
  let best = points[0][1];
  for (const p of points) if (p[1] < best) best = p[1];

  // header: last loss (smoothed when there is a smoothed curve), best loss, step / total
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillStyle = "#ddd";
  const shown = smooth ? smooth[smooth.length - 1] : last[1];
  ctx.fillText(`loss ${formatLoss(shown)}${smooth ? " (avg)" : ""} · min ${formatLoss(best)}`, x0 + 6, top + 4,
    w * 0.7);
  ctx.textAlign = "right";
  ctx.fillStyle = "#aaa";
  const total = Math.max(st?.total ?? 0, last[0]);
  const status = st?.running ? "" : " ✓";
  ctx.fillText(`${last[0]}/${total}${status}`, x0 + w - 6, top + 4, w * 0.3);

  // plot
  const px = x0 + 6;
  const pw = w - 12;
  const py = top + 18;
  const ph = h - 24;
  if (!(ph > 4) || !range) {
    ctx.restore();
    return;
  }
  const s0 = Math.min(points[0][0], 1);
  const s1 = Math.max(total, s0 + 1);
  const X = (step) => px + (pw * (step - s0)) / (s1 - s0);
  const Y = (loss) => py + ph - (ph * (loss - range[0])) / (range[1] - range[0]);
  const buckets = Math.max(8, Math.floor(pw / 2));

  const line = (pts, style, lineWidth) => {
    if (!pts.length) return;
    ctx.beginPath();
    ctx.moveTo(X(pts[0][0]), Y(pts[0][1]));
    for (let i = 1; i < pts.length; i++) ctx.lineTo(X(pts[i][0]), Y(pts[i][1]));
    if (pts.length === 1) ctx.lineTo(X(pts[0][0]) + 1, Y(pts[0][1]));
    ctx.strokeStyle = style;
    ctx.lineWidth = lineWidth;
    ctx.stroke();
  };
  ctx.save();
  ctx.beginPath();
  ctx.rect(px - 1, py - 1, pw + 2, ph + 2);
  ctx.clip();
  line(downsample(points, buckets), smooth ? "rgba(110, 168, 254, 0.35)" : "#6ea8fe", 1);
  if (smooth) line(downsample(points.map((p, i) => [p[0], smooth[i]]), buckets), "#6ea8fe", 1.5);
  ctx.beginPath();
  ctx.arc(X(last[0]), Y(shown), 2.5, 0, Math.PI * 2);
  ctx.fillStyle = "#ffffff";
  ctx.fill();
  ctx.restore();
  ctx.restore();
}

function setLossState(node, st) {
  lossState.set(node, st);
  if (st.running) runningNodes.add(node);
  else runningNodes.delete(node);
}

function onLossEvent(event) {
  const detail = event?.detail;
  if (!detail || typeof detail !== "object") return;
  const node = nodeByExecutionId(detail.node);
  if (!node || nodeClass(node) !== TRAIN_NODE) return;
  let st = lossState.get(node);
  if (!st || (detail.prompt_id && st.promptId && detail.prompt_id !== st.promptId)) st = freshLossState();
  const { points } = mergePoints(st.points, detail.points);
  st.points = points;
  st.source = "event";
  if (detail.prompt_id) st.promptId = detail.prompt_id;
  if (Number.isFinite(Number(detail.total))) st.total = Number(detail.total);
  if (detail.phase) st.phase = String(detail.phase);
  if (Number.isFinite(Number(detail.step)) && st.total != null) st.running = Number(detail.step) < st.total;
  setLossState(node, st);
  redraw(node);
}

/** The progress text also carries the loss: used only when no "memora.loss" event came (an older backend). */
function onProgressText(event) {
  const detail = event?.detail;
  if (!detail || typeof detail !== "object") return;
  const node = nodeByExecutionId(detail.nodeId);
  if (!node || nodeClass(node) !== TRAIN_NODE) return;
  const parsed = parseProgressText(detail.text);
  if (!parsed) return;
  const st = lossState.get(node) ?? freshLossState();
  if (parsed.cancelled) st.running = false;
  if (parsed.loss != null && st.source !== "event" && parsed.phase === "train") {
    st.points = mergePoints(st.points, [[parsed.step, parsed.loss]]).points;
    st.total = parsed.total;
    st.phase = parsed.phase;
    st.source = "text";
    st.running = parsed.step < parsed.total && !parsed.cancelled;
  }
  setLossState(node, st);
  redraw(node);
}

// ------------------------------------------------------------------------------------------- success rate
function drawRateBar(ctx, node, width, y, height) {
  const st = rateState.get(node);
  const box = panelBox(width, y, height);
  if (!box) return;
  const { x0, w, top, h } = box;
  ctx.save();
  roundedRect(ctx, x0, top, w, h, h / 2);
  ctx.fillStyle = "rgba(0, 0, 0, 0.3)";
  ctx.fill();
  const rate = st?.rate;
  if (typeof rate === "number" && Number.isFinite(rate) && rate > 0) {
    ctx.save();
    roundedRect(ctx, x0, top, w, h, h / 2);
    ctx.clip();
    ctx.globalAlpha *= st.stale ? 0.35 : 0.9;
    ctx.fillStyle = rateColor(rate);
    ctx.fillRect(x0, top, w * Math.min(1, rate), h);
    ctx.restore();
  }
  roundedRect(ctx, x0, top, w, h, h / 2);
  ctx.strokeStyle = widgetOutline();
  ctx.lineWidth = 1;
  ctx.stroke();
  ctx.font = "bold 12px sans-serif";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillStyle = st ? "#fff" : "#888";
  let label = "success rate: run the node";
  if (st) {
    label = `success rate ${formatPercent(rate)}  (${st.positives}/${st.total})`;
    if (st.stale) label += " · running…";
  }
  ctx.fillText(label, x0 + w / 2, top + h / 2 + 0.5, w - 12);
  ctx.restore();
}

/** The rate as a pill at the right of the title bar (classic canvas), when the title leaves room for it. */
function drawRateBadge(ctx, node) {
  const st = rateState.get(node);
  if (!st || node.flags?.collapsed || !(node.size?.length >= 2)) return;
  if (typeof st.rate !== "number" || !Number.isFinite(st.rate)) return;
  const titleHeight = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const text = `${Math.round(st.rate * 100)} %`;
  ctx.save();
  ctx.font = `${globalThis.LiteGraph?.NODE_TEXT_SIZE ?? 14}px sans-serif`;
  const title = String((typeof node.getTitle === "function" ? node.getTitle() : node.title) ?? "");
  const titleWidth = ctx.measureText(title).width + titleHeight + 8;
  ctx.font = "bold 11px sans-serif";
  const pillWidth = ctx.measureText(text).width + 12;
  const pillHeight = 18;
  const x = node.size[0] - pillWidth - 8;
  if (x > titleWidth) {
    const y = -titleHeight + (titleHeight - pillHeight) / 2;
    roundedRect(ctx, x, y, pillWidth, pillHeight, pillHeight / 2);
    ctx.globalAlpha *= st.stale ? 0.45 : 1;
    ctx.fillStyle = rateColor(st.rate);
    ctx.fill();
    ctx.fillStyle = "#fff";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(text, x + pillWidth / 2, y + pillHeight / 2 + 0.5);
  }
  ctx.restore();
}

function addTextWidget(node) {
  if (typeof node?.addDOMWidget !== "function" || typeof document === "undefined") return null;
  if (node.widgets?.some((w) => w?.name === TEXT_WIDGET)) return null;
  const element = document.createElement("textarea");
  element.readOnly = true;
  element.spellcheck = false;
  element.className = "comfy-multiline-input";
  element.placeholder = "per-image results appear here after a run";
  Object.assign(element.style, { fontFamily: "monospace", fontSize: "11px", whiteSpace: "pre", width: "100%" });
  const widget = node.addDOMWidget(TEXT_WIDGET, "memora.text", element, {
    serialize: false,
    hideOnZoom: true,
    getValue: () => element.value,
    setValue: (value) => {
      element.value = value == null ? "" : String(value);
    },
    getMinHeight: () => 60,
    getMaxHeight: () => 220,
  });
  if (widget) {
    widget.serialize = false;
    if (widget.options) widget.options.serialize = false;
  }
  return widget;
}

function showRate(node, output) {
  const text = outputText(output);
  const parsed = parseSuccessRate(text);
  if (parsed) rateState.set(node, { ...parsed, text, stale: false });
  runningNodes.delete(node);
  const widget = node.widgets?.find((w) => w?.name === TEXT_WIDGET);
  if (widget && text) {
    const element = widget.element;
    if (element && "value" in element) element.value = text;
    else widget.value = text;
  }
  redraw(node);
}

// ------------------------------------------------------------------------------------------ run lifecycle
function onExecuting(event) {
  const detail = event?.detail;
  const id = detail && typeof detail === "object" ? detail.display_node ?? detail.node : detail;
  const node = nodeByExecutionId(id);
  if (!node) return;
  const cls = nodeClass(node);
  if (cls === TRAIN_NODE) {
    setLossState(node, freshLossState()); // a new run of this node: start a new curve
    redraw(node);
  } else if (RATE_NODES.has(cls)) {
    const st = rateState.get(node);
    if (st) {
      st.stale = true; // keep the previous rate, dimmed, until the new one comes
      runningNodes.add(node);
      redraw(node);
    }
  }
}

function onExecutionEnded() {
  // an interrupted or failed run: nothing is "running" any more (a dimmed rate is the last one again)
  for (const node of [...runningNodes]) {
    const st = lossState.get(node);
    if (st) st.running = false;
    const rate = rateState.get(node);
    if (rate) rate.stale = false;
    runningNodes.delete(node);
    redraw(node);
  }
}

// ------------------------------------------------------------------------------------------- extension
app.registerExtension({
  name: EXTENSION,

  setup() {
    if (typeof api?.addEventListener !== "function") return;
    api.addEventListener(LOSS_EVENT, guarded("loss event", onLossEvent));
    api.addEventListener("progress_text", guarded("progress_text", onProgressText));
    api.addEventListener("executing", guarded("executing", onExecuting));
    for (const ended of ["execution_error", "execution_interrupted"]) {
      api.addEventListener(ended, guarded(ended, onExecutionEnded));
    }
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    const name = nodeData?.name;
    const proto = nodeType?.prototype;
    if (!proto) return;
    if (name === TRAIN_NODE) {
      chainCallback(proto, "onNodeCreated", function onNodeCreated() {
        addCanvasWidget(this, CURVE_WIDGET, CURVE_HEIGHT, drawLossCurve);
        fitHeight(this);
      });
      chainCallback(proto, "onConfigure", function onConfigure() {
        fitHeight(this);
      });
      chainCallback(proto, "onExecuted", function onExecuted() {
        const st = lossState.get(this);
        if (st) {
          st.running = false; // keep the curve after the run
          runningNodes.delete(this);
          redraw(this);
        }
      });
    } else if (RATE_NODES.has(name)) {
      chainCallback(proto, "onNodeCreated", function onNodeCreated() {
        addCanvasWidget(this, RATE_WIDGET, RATE_HEIGHT, drawRateBar);
        addTextWidget(this);
        fitHeight(this);
      });
      chainCallback(proto, "onConfigure", function onConfigure() {
        fitHeight(this);
      });
      chainCallback(proto, "onExecuted", function onExecuted(output) {
        showRate(this, output);
      });
      chainCallback(proto, "onDrawForeground", function onDrawForeground(ctx) {
        withContext(ctx, () => drawRateBadge(ctx, this));
      });
    }
  },

  // outputs restored by the frontend (e.g. switching back to a workflow tab): show their rate again
  onNodeOutputsUpdated: guarded("onNodeOutputsUpdated", (nodeOutputs) => {
    if (!nodeOutputs || typeof nodeOutputs !== "object") return;
    for (const [id, output] of Object.entries(nodeOutputs)) {
      if (id.includes(":")) continue; // (subgraph locator ids: their nodes get onExecuted)
      const node = nodeByExecutionId(id);
      if (node && RATE_NODES.has(nodeClass(node)) && output?.text) showRate(node, output);
    }
  }),
});
