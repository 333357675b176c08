// Pure helpers of the MemoRa frontend extension (js/memora.js): parsing the backend's texts, formatting numbers,
// preparing the loss curve. No DOM, no ComfyUI imports and no side effects, so Node can import this file as is
// (tests/test_js_extension.py does), and ComfyUI loading it as an extension of its own is harmless.

/** `"train 120/500 · loss 0.0123 · 4.1 it/s · ETA 0:29"` (NodeProgress.format_text in nodes/common.py) ->
 * `{phase, step, total, loss, rate, eta, done, cancelled}` (rate in steps/s, eta and done in seconds; null when
 * absent), or null when the text is not a progress text. */
export function parseProgressText(text) {
  if (typeof text !== "string") return null;
  const parts = text.trim().split(" · ");
  const head = /^(.+?) (\d+)\/(\d+)$/.exec(parts[0] ?? "");
  if (!head) return null;
  const out = {
    phase: head[1], step: Number(head[2]), total: Number(head[3]),
    loss: null, rate: null, eta: null, done: null, cancelled: false,
  };
  for (const part of parts.slice(1)) {
    let m;
    if ((m = /^loss (\S+)$/.exec(part))) out.loss = Number(m[1]);
    else if ((m = /^([\d.]+) it\/s$/.exec(part))) out.rate = Number(m[1]);
    else if ((m = /^([\d.]+) s\/it$/.exec(part))) out.rate = Number(m[1]) > 0 ? 1 / Number(m[1]) : null;
    else if ((m = /^ETA (\S+)$/.exec(part))) out.eta = parseDuration(m[1]);
    else if ((m = /^done in (\S+)$/.exec(part))) out.done = parseDuration(m[1]);
    else if (part === "cancelled") out.cancelled = true;
  }
  return out;
}

/** `"0:29"` -> 29, `"1:02:03"` -> 3723; null if malformed. */
export function parseDuration(text) {
  if (typeof text !== "string" || !/^\d+(:\d{1,2}){1,2}$/.test(text)) return null;
  return text.split(":").reduce((acc, part) => acc * 60 + Number(part), 0);
}

/** Seconds -> `"0:29"` / `"1:02:03"` (the same as NodeProgress.format_duration). */
export function formatDuration(seconds) {
  const s = Math.max(0, Math.round(Number(seconds) || 0));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
}

/** A loss for display: 4 decimals in the usual range, else scientific (the same as NodeProgress.format_loss). */
export function formatLoss(loss) {
  if (typeof loss !== "number" || !Number.isFinite(loss)) return String(loss);
  const a = Math.abs(loss);
  if (loss === 0 || (a >= 1e-3 && a < 1e4)) return loss.toFixed(4);
  const [mantissa, exponent] = loss.toExponential(3).split("e"); // Python's "%.3e": 1.234e-05
  return `${mantissa}e${exponent[0]}${exponent.slice(1).padStart(2, "0")}`;
}

/** The first line of Detect Concept / Evaluate Prompt Set's text, `"success rate 0.750 (3/4) ..."` ->
 * `{rate: 0.75, positives: 3, total: 4}`, or null. Accepts the text, a list of texts (ComfyUI's ui "text" is a
 * list) or a node output object `{text: [...]}`. */
export function parseSuccessRate(value) {
  const text = outputText(value);
  const m = /success rate\s+(nan|[0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*\(\s*(\d+)\s*\/\s*(\d+)\s*\)/i.exec(text);
  if (!m) return null;
  const positives = Number(m[2]);
  const total = Number(m[3]);
  let rate = Number(m[1]);
  if (!Number.isFinite(rate)) rate = total > 0 ? positives / total : NaN;
  return { rate, positives, total };
}

/** A node output's text as one string: `"a"`, `["a", "b"]` or `{text: [...]}` -> `"a\nb"`; "" if none. */
export function outputText(value) {
  if (value == null) return "";
  if (typeof value === "string") return value;
  if (Array.isArray(value)) return value.filter((v) => v != null).map(String).join("\n");
  if (typeof value === "object" && "text" in value) return outputText(value.text);
  return "";
}

/** `0.75` -> `"75.0 %"`; `"–"` when not a number. */
export function formatPercent(rate) {
  return typeof rate === "number" && Number.isFinite(rate) ? `${(rate * 100).toFixed(1)} %` : "–";
}

/** The colour of a success rate: green (concept rarely detected) -> amber -> red (detected on most images). */
export function rateColor(rate) {
  if (typeof rate !== "number" || !Number.isFinite(rate)) return "#777777";
  const r = Math.min(1, Math.max(0, rate));
  const stops = [[0, [46, 160, 67]], [0.5, [212, 160, 23]], [1, [207, 34, 46]]];
  let i = 0;
  while (i < stops.length - 2 && r > stops[i + 1][0]) i++;
  const [t0, c0] = stops[i];
  const [t1, c1] = stops[i + 1];
  const f = (r - t0) / (t1 - t0);
  const hex = (k) => Math.round(c0[k] + f * (c1[k] - c0[k])).toString(16).padStart(2, "0");
  return `#${hex(0)}${hex(1)}${hex(2)}`;
}

/** Append `[step, loss]` points to a curve. Points whose step is not after the curve's last step are dropped,
 * except when the batch starts at or before the curve's first step: a new run, so the curve restarts.
 * Returns `{points, reset}` (a new array; the inputs are not changed). Non-finite losses are dropped. */
export function mergePoints(existing, incoming) {
  const clean = (Array.isArray(incoming) ? incoming : [])
    .filter((p) => Array.isArray(p) && Number.isFinite(Number(p[0])) && Number.isFinite(Number(p[1])))
    .map((p) => [Number(p[0]), Number(p[1])]);
  const base = Array.isArray(existing) ? existing : [];
  if (!clean.length) return { points: base.slice(), reset: false };
  const reset = base.length > 0 && clean[0][0] <= base[0][0];
  const points = reset ? [] : base.slice();
  for (const p of clean) {
    if (!points.length || p[0] > points[points.length - 1][0]) points.push(p);
  }
  return { points, reset };
}

/** Exponential moving average of the losses (bias-corrected, so the start is not pulled to 0). */
export function ema(values, alpha = 0.1) {
  const out = [];
  let avg = 0;
  let weight = 0;
  for (const v of values) {
    avg = (1 - alpha) * avg + alpha * v;
    weight = (1 - alpha) * weight + alpha;
    out.push(avg / weight);
  }
  return out;
}

/** At most `buckets` [step, loss] points spread over the steps: each bucket keeps its min and max loss (in step
 * order), so spikes survive; short curves are returned as they are. */
export function downsample(points, buckets) {
  const n = Math.max(1, Math.floor(buckets));
  if (!Array.isArray(points) || points.length <= 2 * n) return Array.isArray(points) ? points.slice() : [];
  const out = [];
  const size = points.length / n;
  for (let b = 0; b < n; b++) {
    const chunk = points.slice(Math.floor(b * size), Math.floor((b + 1) * size));
    if (!chunk.length) continue;
    let lo = chunk[0];
    let hi = chunk[0];
    for (const p of chunk) {
      if (p[1] < lo[1]) lo = p;
      if (p[1] > hi[1]) hi = p;
    }
    if (lo === hi) out.push(lo);
    else if (lo[0] < hi[0]) out.push(lo, hi);
    else out.push(hi, lo);
  }
  return out;
}

/** `[min, max]` of the losses, widened a little (and never empty) for plotting; null for no points. */
export function lossRange(points) {
  if (!Array.isArray(points) || !points.length) return null;
  let lo = Infinity;
  let hi = -Infinity;
  for (const p of points) {
    if (p[1] < lo) lo = p[1];
    if (p[1] > hi) hi = p[1];
  }
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return null;
  const pad = hi > lo ? (hi - lo) * 0.05 : Math.max(Math.abs(hi) * 0.05, 1e-6);
  return [lo - pad, hi + pad];
}
