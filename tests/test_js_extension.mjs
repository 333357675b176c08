// Node-only checks of the frontend extension (run by tests/test_js_extension.py; no npm packages, no browser):
//
// 1. the pure helpers of js/memora_format.js;
// 2. js/memora.js itself, loaded against a fake ComfyUI (app / api shims at ../../scripts/*.js, a fake graph,
//    nodes and 2D context): it registers "memora.ui", adds its widgets, draws the loss curve from "memora.loss"
//    events, clears it on "executing", shows the success rate from "executed" output, and writes nothing to the
//    console.
//
// Usage: node tests/test_js_extension.mjs [path/to/js]   (exit code 0 = all passed)

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const jsDir = path.resolve(process.argv[2] ?? path.join(here, "..", "js"));
const results = [];

async function check(name, fn) {
  try {
    await fn();
    results.push([name, null]);
  } catch (error) {
    results.push([name, error]);
  }
}

// ComfyUI serves the pack's js/ at /extensions/<pack>/ and the shims at /scripts/: rebuild that layout.
const root = fs.mkdtempSync(path.join(os.tmpdir(), "memora-js-"));
fs.writeFileSync(path.join(root, "package.json"), JSON.stringify({ type: "module" }));
fs.mkdirSync(path.join(root, "scripts"));
fs.writeFileSync(path.join(root, "scripts", "app.js"), "export const app = globalThis.__memoraTest.app;\n");
fs.writeFileSync(path.join(root, "scripts", "api.js"), "export const api = globalThis.__memoraTest.api;\n");
const packDir = path.join(root, "extensions", "ComfyUI-MemoRa");
fs.mkdirSync(packDir, { recursive: true });
for (const file of fs.readdirSync(jsDir)) {
  if (file.endsWith(".js")) fs.copyFileSync(path.join(jsDir, file), path.join(packDir, file));
}
const importPack = (file) => import(pathToFileURL(path.join(packDir, file)).href);

// ------------------------------------------------------------------------------------------- pure helpers
const fmt = await importPack("memora_format.js");

await check("parseProgressText", () => {
  assert.deepEqual(fmt.parseProgressText("train 120/500 · loss 0.0123 · 4.1 it/s · ETA 0:29"), {
    phase: "train", step: 120, total: 500, loss: 0.0123, rate: 4.1, eta: 29, done: null, cancelled: false,
  });
  const slow = fmt.parseProgressText("invert 12/35 · 2.0 s/it · ETA 1:02:03");
  assert.equal(slow.phase, "invert");
  assert.equal(slow.rate, 0.5);
  assert.equal(slow.eta, 3723);
  assert.equal(slow.loss, null);
  const end = fmt.parseProgressText("erase (ESD) 50/50 · loss 1.234e-05 · 9.0 it/s · done in 0:06");
  assert.equal(end.phase, "erase (ESD)");
  assert.equal(end.loss, 1.234e-5);
  assert.equal(end.done, 6);
  assert.equal(fmt.parseProgressText("train 7/500 · loss 0.1000 · 3.0 it/s · cancelled").cancelled, true);
  assert.deepEqual(fmt.parseProgressText("detect 3/4"), {
    phase: "detect", step: 3, total: 4, loss: null, rate: null, eta: null, done: null, cancelled: false,
  });
  assert.equal(fmt.parseProgressText("width: 512, height: 512"), null);
  assert.equal(fmt.parseProgressText(undefined), null);
});

await check("formatDuration / parseDuration / formatLoss / formatPercent", () => {
  assert.equal(fmt.formatDuration(29), "0:29");
  assert.equal(fmt.formatDuration(29.6), "0:30");
  assert.equal(fmt.formatDuration(3723), "1:02:03");
  assert.equal(fmt.formatDuration(-5), "0:00");
  assert.equal(fmt.formatDuration(NaN), "0:00");
  assert.equal(fmt.parseDuration("1:02:03"), 3723);
  assert.equal(fmt.parseDuration("abc"), null);
  assert.equal(fmt.formatLoss(0.0123), "0.0123");
  assert.equal(fmt.formatLoss(0), "0.0000");
  assert.equal(fmt.formatLoss(1.234e-5), "1.234e-05");
  assert.equal(fmt.formatLoss(123456), "1.235e+05");
  assert.equal(fmt.formatLoss(NaN), "NaN");
  assert.equal(fmt.formatPercent(0.75), "75.0 %");
  assert.equal(fmt.formatPercent(undefined), "–");
});

await check("parseSuccessRate", () => {
  const detect = "success rate 0.750 (3/4) - any EXPOSED class > 0.45\n  0 YES score 0.912  FEMALE_BREAST_EXPOSED";
  assert.deepEqual(fmt.parseSuccessRate(detect), { rate: 0.75, positives: 3, total: 4 });
  assert.deepEqual(fmt.parseSuccessRate({ text: ["success rate 0.000 (0/142); 142 generated, 0 reused\nx.csv"] }),
    { rate: 0, positives: 0, total: 142 });
  assert.deepEqual(fmt.parseSuccessRate(["success rate 1.000 (2/2)"]), { rate: 1, positives: 2, total: 2 });
  const nan = fmt.parseSuccessRate("success rate nan (0/0)");
  assert.ok(Number.isNaN(nan.rate) && nan.total === 0);
  assert.equal(fmt.parseSuccessRate("no rate here"), null);
  assert.equal(fmt.parseSuccessRate(null), null);
  assert.equal(fmt.outputText({ text: ["a", "b"] }), "a\nb");
});

await check("rateColor", () => {
  assert.equal(fmt.rateColor(0), "#2ea043");
  assert.equal(fmt.rateColor(0.5), "#d4a017");
  assert.equal(fmt.rateColor(1), "#cf222e");
  assert.equal(fmt.rateColor(7), "#cf222e");
  assert.match(fmt.rateColor(0.25), /^#[0-9a-f]{6}$/);
  assert.equal(fmt.rateColor(NaN), "#777777");
});

await check("mergePoints / ema / downsample / lossRange", () => {
  let { points, reset } = fmt.mergePoints([], [[1, 0.5], [2, 0.4]]);
  assert.deepEqual(points, [[1, 0.5], [2, 0.4]]);
  assert.equal(reset, false);
  ({ points, reset } = fmt.mergePoints(points, [[2, 0.9], [3, 0.3], [4, NaN], ["x", 1]]));
  assert.deepEqual(points, [[1, 0.5], [2, 0.4], [3, 0.3]]); // repeated step and junk dropped
  ({ points, reset } = fmt.mergePoints(points, [[1, 0.7]]));
  assert.deepEqual(points, [[1, 0.7]]); // back to the first step: a new run
  assert.equal(reset, true);
  const input = [[1, 1]];
  fmt.mergePoints(input, [[2, 2]]);
  assert.deepEqual(input, [[1, 1]]); // inputs untouched

  const smooth = fmt.ema([1, 1, 1, 3], 0.5);
  assert.equal(smooth[0], 1); // bias-corrected: the first value is itself
  assert.ok(smooth[3] > 1 && smooth[3] < 3);

  const many = Array.from({ length: 1000 }, (_, i) => [i + 1, i === 500 ? 10 : Math.sin(i)]);
  const few = fmt.downsample(many, 50);
  assert.ok(few.length <= 100 && few.length >= 50);
  assert.ok(few.some((p) => p[1] === 10)); // the spike survives
  for (let i = 1; i < few.length; i++) assert.ok(few[i][0] > few[i - 1][0]); // in step order
  assert.deepEqual(fmt.downsample([[1, 2]], 50), [[1, 2]]);

  const [lo, hi] = fmt.lossRange([[1, 0.2], [2, 0.4]]);
  assert.ok(lo < 0.2 && hi > 0.4);
  const flat = fmt.lossRange([[1, 0.3]]);
  assert.ok(flat[0] < 0.3 && flat[1] > 0.3);
  assert.equal(fmt.lossRange([]), null);
});

// ------------------------------------------------------------------------ the extension, in a fake ComfyUI
const consoleCalls = [];
for (const level of ["error", "warn"]) {
  const original = console[level];
  console[level] = (...args) => {
    consoleCalls.push([level, args.map(String).join(" ")]);
    original.apply(console, args);
  };
}

/** A 2D context that records what is drawn. */
function fakeContext() {
  const calls = [];
  const texts = [];
  const state = { font: "10px sans-serif", globalAlpha: 1 };
  return new Proxy(state, {
    get(target, key) {
      if (key === "calls") return calls;
      if (key === "texts") return texts;
      if (key === "measureText") return (text) => ({ width: String(text).length * 7 });
      if (key === "fillText") return (text, ...rest) => { texts.push(String(text)); calls.push(["fillText", text, ...rest]); };
      if (key in target) return target[key];
      return (...args) => {
        for (const a of args) if (typeof a === "number") assert.ok(Number.isFinite(a), `${String(key)}(${args})`);
        calls.push([key, ...args]);
      };
    },
    set(target, key, value) {
      target[key] = value;
      return true;
    },
  });
}

class FakeNode {
  constructor(type, id) {
    this.type = type;
    this.comfyClass = type;
    this.id = id;
    this.size = [320, 200];
    this.title = type;
    this.flags = {};
    this.widgets = [{ name: "steps", value: 500 }];
    this.dirty = 0;
  }
  addCustomWidget(widget) {
    this.widgets.push(widget);
    return widget;
  }
  addDOMWidget(name, type, element, options) {
    const widget = { name, type, element, options };
    Object.defineProperty(widget, "value", {
      get: () => options.getValue?.(),
      set: (v) => options.setValue?.(v),
    });
    this.widgets.push(widget);
    return widget;
  }
  computeSize() {
    let height = 30;
    for (const w of this.widgets) height += (w.computeSize ? w.computeSize(this.size[0])[1] : 20) + 4;
    return [200, height];
  }
  setSize(size) {
    this.size = [...size];
  }
  setDirtyCanvas() {
    this.dirty++;
  }
}

const nodes = new Map();
const registered = [];
const api = new EventTarget();
globalThis.__memoraTest = {
  app: {
    registerExtension(extension) {
      registered.push(extension);
    },
    graph: { getNodeById: (id) => nodes.get(String(id)) ?? null, setDirtyCanvas() {} },
  },
  api,
};
globalThis.document ??= {
  createElement: (tag) => ({ tagName: tag.toUpperCase(), style: {}, value: "", readOnly: false }),
};
globalThis.CustomEvent ??= class CustomEvent extends Event { // (Node 18 has it behind a flag only)
  constructor(type, options) {
    super(type, options);
    this.detail = options?.detail ?? null;
  }
};
const emit = (type, detail) => api.dispatchEvent(new CustomEvent(type, { detail }));

await importPack("memora.js");
const extension = registered[0];

async function makeNodeType(name) {
  class NodeType extends FakeNode {}
  NodeType.prototype.onExecuted = function onExecuted(output) {
    this.ownOnExecuted = output; // the frontend's own handler must still run
  };
  await extension.beforeRegisterNodeDef(NodeType, { name });
  return NodeType;
}

function create(NodeType, name, id) {
  const node = new NodeType(name, id);
  node.onNodeCreated?.();
  nodes.set(String(id), node);
  return node;
}

function drawWidget(node, widgetName) {
  const widget = node.widgets.find((w) => w.name === widgetName);
  assert.ok(widget, `${widgetName} widget`);
  const ctx = fakeContext();
  widget.draw(ctx, node, node.size[0], 60, 20, false);
  return ctx;
}

await check("registers memora.ui once, with setup and beforeRegisterNodeDef", () => {
  assert.equal(registered.length, 1);
  assert.equal(extension.name, "memora.ui");
  assert.equal(typeof extension.setup, "function");
  assert.equal(typeof extension.beforeRegisterNodeDef, "function");
  extension.setup();
});

const Train = await makeNodeType("MemoRaTrainLoRA");
const Detect = await makeNodeType("MemoRaDetectConcept");
const Evaluate = await makeNodeType("MemoRaEvaluatePromptSet");
const Other = await makeNodeType("KSampler");

await check("leaves other node types alone", () => {
  const node = create(Other, "KSampler", 99);
  assert.equal(node.widgets.length, 1);
  assert.equal(Other.prototype.onDrawForeground, undefined);
});

await check("train node: a loss-curve widget that is never saved nor sent", () => {
  const node = create(Train, "MemoRaTrainLoRA", 5);
  const widget = node.widgets.find((w) => w.name === "memora_loss_curve");
  assert.ok(widget);
  assert.equal(widget.serialize, false);
  assert.equal(widget.options.serialize, false);
  assert.equal(widget.serializeValue(), undefined);
  assert.ok(node.size[1] >= node.computeSize()[1]); // grown to fit
  assert.ok(drawWidget(node, "memora_loss_curve").texts.some((t) => t.startsWith("loss curve")));
  node.onConfigure?.({});
});

await check("train node: the curve follows memora.loss, clears on executing, stays after executed", () => {
  const node = nodes.get("5");
  emit("executing", "5");
  emit("memora.loss", { node: "5", prompt_id: "p1", phase: "train", step: 2, total: 10, points: [[1, 0.5], [2, 0.4]] });
  let ctx = drawWidget(node, "memora_loss_curve");
  assert.ok(ctx.texts.includes("2/10"), ctx.texts.join(" | "));
  assert.ok(ctx.calls.some((c) => c[0] === "lineTo"));
  const points = Array.from({ length: 20 }, (_, i) => [i + 3, 0.4 - i * 0.01]);
  emit("memora.loss", { node: "5", prompt_id: "p1", phase: "train", step: 10, total: 10, points });
  node.onExecuted({ images: [] });
  assert.deepEqual(node.ownOnExecuted, { images: [] });
  ctx = drawWidget(node, "memora_loss_curve");
  assert.ok(ctx.texts.some((t) => t.startsWith("22/22") || t.startsWith("22/")), ctx.texts.join(" | "));
  assert.ok(ctx.texts.some((t) => t.includes("(avg)")));
  assert.ok(ctx.texts.some((t) => t.includes("✓")));
  emit("executing", "7"); // another node: kept
  assert.ok(drawWidget(node, "memora_loss_curve").texts.some((t) => t.includes("✓")));
  emit("executing", "5"); // the same node again: a new curve
  assert.ok(drawWidget(node, "memora_loss_curve").texts.some((t) => t.includes("waiting")));
  emit("execution_interrupted", { prompt_id: "p2" });
  assert.ok(drawWidget(node, "memora_loss_curve").texts.some((t) => t.includes("drawn while training")));
  assert.ok(node.dirty > 0);
});

await check("train node: progress_text feeds the curve only without memora.loss events", () => {
  const node = create(Train, "MemoRaTrainLoRA", 6);
  emit("executing", "6");
  emit("progress_text", { nodeId: "6", text: "train 1/4 · loss 0.9000" });
  emit("progress_text", { nodeId: "6", text: "train 2/4 · loss 0.8000 · 4.0 it/s · ETA 0:01" });
  assert.ok(drawWidget(node, "memora_loss_curve").texts.includes("2/4"));
  emit("memora.loss", { node: "6", prompt_id: "p3", phase: "train", step: 3, total: 4, points: [[3, 0.7]] });
  emit("progress_text", { nodeId: "6", text: "train 4/4 · loss 0.6000" }); // ignored: events are the source
  assert.ok(drawWidget(node, "memora_loss_curve").texts.includes("3/4"));
});

await check("events for unknown or malformed nodes are ignored", () => {
  emit("memora.loss", { node: "404", points: [[1, 1]] });
  emit("memora.loss", null);
  emit("memora.loss", { node: "99", points: [[1, 1]] }); // a KSampler
  emit("progress_text", { nodeId: "5" });
  emit("executing", null);
  emit("executing", { node: "5" });
  emit("memora.loss", { node: "1:2", points: [[1, 1]] });
});

await check("detect node: rate bar, title badge and result text from executed", () => {
  const node = create(Detect, "MemoRaDetectConcept", 8);
  const text = node.widgets.find((w) => w.name === "memora_result_text");
  assert.ok(text && text.element.readOnly === true);
  assert.equal(text.serialize, false);
  assert.equal(text.options.serialize, false);
  assert.ok(drawWidget(node, "memora_success_rate").texts.some((t) => t.includes("run the node")));
  const output = { images: [{}], text: ["success rate 0.750 (3/4) - rule\n  0 YES score 0.912  x"] };
  node.onExecuted(output);
  assert.equal(node.ownOnExecuted, output);
  assert.ok(drawWidget(node, "memora_success_rate").texts.some((t) => t.includes("75.0 %") && t.includes("3/4")));
  assert.equal(text.element.value, output.text[0]);
  const ctx = fakeContext();
  node.onDrawForeground(ctx);
  assert.ok(ctx.texts.includes("75 %"), ctx.texts.join(" | "));
  node.size = [90, 200]; // too narrow for the title and the badge: no badge
  const narrow = fakeContext();
  node.onDrawForeground(narrow);
  assert.deepEqual(narrow.texts, []);
  node.size = [320, 200];
  emit("executing", "8");
  assert.ok(drawWidget(node, "memora_success_rate").texts.some((t) => t.includes("running")));
  emit("execution_error", { prompt_id: "p4" }); // the new run failed: the last rate, no longer dimmed
  const after = drawWidget(node, "memora_success_rate").texts;
  assert.ok(after.some((t) => t.includes("75.0 %") && !t.includes("running")), after.join(" | "));
});

await check("evaluate node: the rate from its text, and restored outputs", () => {
  const node = create(Evaluate, "MemoRaEvaluatePromptSet", 9);
  node.onExecuted({ text: ["success rate 0.100 (1/10); 10 generated, 0 reused\n/out/results.csv"] });
  assert.ok(drawWidget(node, "memora_success_rate").texts.some((t) => t.includes("10.0 %")));
  extension.onNodeOutputsUpdated?.({ 9: { text: ["success rate 0.200 (2/10); 0 generated, 10 reused"] } });
  assert.ok(drawWidget(node, "memora_success_rate").texts.some((t) => t.includes("20.0 %")));
  node.onExecuted({ images: [] }); // no text: the rate stays
  node.onExecuted(undefined);
  assert.ok(drawWidget(node, "memora_success_rate").texts.some((t) => t.includes("20.0 %")));
});

await check("works without addDOMWidget / document (older or headless frontends)", () => {
  const node = new Detect("MemoRaDetectConcept", 10);
  node.addDOMWidget = undefined;
  node.onNodeCreated();
  nodes.set("10", node);
  node.onExecuted({ text: ["success rate 0.500 (1/2)"] });
  assert.ok(drawWidget(node, "memora_success_rate").texts.some((t) => t.includes("50.0 %")));
});

await check("nothing written to console.error / console.warn", () => {
  assert.deepEqual(consoleCalls, []);
});

fs.rmSync(root, { recursive: true, force: true });
let failed = 0;
for (const [name, error] of results) {
  if (error) {
    failed++;
    console.log(`FAIL ${name}\n${error.stack ?? error}`);
  } else {
    console.log(`ok   ${name}`);
  }
}
console.log(`${results.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
