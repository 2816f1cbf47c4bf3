// DetBooth web console: plain JS over the gateway's public API (same origin). No build step, nothing external.
"use strict";

const KEY_STORE = "detbooth.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, title, detail) {
    super(detail ? `${title} (${status}): ${detail}` : `${title} (${status})`);
    this.status = status; this.title = title; this.detail = detail;
  }
}

function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : { ...extra };
}

// An artifact URL from a job result, as a path on this origin (the console talks to its own gateway only).
function samePath(url) {
  const u = new URL(url, location.href);
  return u.pathname + u.search;
}

async function problemOf(r) {
  let body = {};
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  let detail = body.detail || "";
  const retry = r.headers.get("Retry-After");
  if (retry && (r.status === 429 || r.status === 503)) detail = `${detail} (retry after ${retry} s)`.trim();
  return new ApiError(r.status, body.title || r.statusText || "HTTP error", detail);
}

async function api(path, { method = "GET", json, form, headers = {}, signal } = {}) {
  const init = { method, headers: authHeaders(headers), signal };
  if (json !== undefined) { init.body = JSON.stringify(json); init.headers["Content-Type"] = "application/json"; }
  if (form !== undefined) init.body = form;
  let r;
  try { r = await fetch(path, init); } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "Cannot reach the gateway", String(e.message || e));
  }
  if (r.status === 401) askForKey("The API key was refused: enter a valid key.");
  if (!r.ok) throw await problemOf(r);
  return r;
}
const getJSON = async (path, opts) => (await api(path, opts)).json();

// Server-Sent Events of a job over fetch (EventSource cannot send the API key); resumes with Last-Event-ID.
async function followEvents(jobId, onEvent, signal) {
  let last = null, tries = 0;
  for (;;) {
    try {
      const r = await api(`/jobs/${encodeURIComponent(jobId)}/events`,
                          { headers: last ? { "Last-Event-ID": last } : {}, signal });
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;  // the gateway ends the stream when the job has ended
        buf += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          const ev = parseEvent(block);
          if (!ev) continue;
          if (ev.id) last = ev.id;
          tries = 0;
          onEvent(ev.event, ev.data);
          if (ev.event === "status" && TERMINAL.has(ev.data.status)) { reader.cancel().catch(() => {}); return; }
        }
      }
    } catch (e) {
      if (e.name === "AbortError" || (e instanceof ApiError && e.status !== 0)) throw e;
      if (++tries > 5) throw e;
      await sleep(500 * tries);
    }
  }
}

function parseEvent(block) {
  let id = "", event = "message"; const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") id = value; else if (field === "event") event = value; else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  let parsed; try { parsed = JSON.parse(data.join("\n")); } catch (_) { parsed = { text: data.join("\n") }; }
  return { id, event, data: parsed };
}

// Follow a job to its end, then return its final record (polls if the stream stops early).
async function runToEnd(jobId, onEvent, signal) {
  await followEvents(jobId, onEvent, signal);
  let job = await getJSON(`/jobs/${encodeURIComponent(jobId)}`, { signal });
  while (!TERMINAL.has(job.status)) { await sleep(1000); job = await getJSON(`/jobs/${encodeURIComponent(jobId)}`, { signal }); }
  return job;
}

// ------------------------------------------------------------------ small helpers

const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function showError(id, err) {
  const node = $(id);
  if (!err) { node.hidden = true; node.textContent = ""; return; }
  node.textContent = err instanceof Error ? err.message : String(err);
  node.hidden = false;
}

function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: filename });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function drawImageTo(canvas, source, maxSide = 1600) {
  const bitmap = await createImageBitmap(source);
  const scale = Math.min(1, maxSide / Math.max(bitmap.width, bitmap.height));
  canvas.width = Math.round(bitmap.width * scale); canvas.height = Math.round(bitmap.height * scale);
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  return scale;
}

function imageFiles(list) { return [...list].filter((f) => f.type.startsWith("image/")); }

// what /detect reads: images, and PDF / TIFF documents (a page each)
function detectableFiles(list) {
  return [...list].filter((f) => f.type.startsWith("image/") || f.type === "application/pdf" || /\.(pdf|tiff?)$/i.test(f.name));
}

function wireDropzone(zoneId, inputId, onFiles, accept = imageFiles) {
  const zone = $(zoneId), input = $(inputId);
  input.addEventListener("change", () => { onFiles(accept(input.files)); input.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    onFiles(accept(e.dataTransfer.files));
  });
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
}

function wireRangeOutput(input) {
  const out = input.nextElementSibling;
  const digits = input.step && input.step.includes(".") ? Math.max(1, input.step.split(".")[1].length) : 0;
  const show = () => { out.textContent = Number(input.value).toFixed(digits === 1 ? 1 : 2); };
  input.addEventListener("input", show); show();
}

function fmtTime(iso) { return iso ? new Date(iso).toLocaleString() : ""; }

// ------------------------------------------------------------------ session and tabs

function askForKey(message) {
  const dialog = $("key-dialog");
  showError("key-error", message || null);
  $("key-input").value = "";
  if (!dialog.open) dialog.showModal();
  $("key-input").focus();
}

async function connect(key) {
  sessionStorage.setItem(KEY_STORE, key);
  try {
    const r = await fetch("/models", { headers: authHeaders() });
    if (r.status === 401) throw await problemOf(r);
    if (!r.ok) throw await problemOf(r);
  } catch (e) {
    sessionStorage.removeItem(KEY_STORE);
    throw e instanceof ApiError ? e : new ApiError(0, "Cannot reach the gateway", String(e.message || e));
  }
  $("key-status").textContent = key ? `key …${key.slice(-4)}` : "no key";
}

$("key-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await connect($("key-input").value.trim());
    $("key-dialog").close();
    showTab();
  } catch (err) { showError("key-error", err); }
});
$("key-dialog").addEventListener("cancel", (e) => { if (sessionStorage.getItem(KEY_STORE) === null) e.preventDefault(); });
$("change-key").addEventListener("click", () => askForKey());

function showTab() {
  const [name, arg] = (location.hash || "#detect").slice(1).split("/");
  const tab = ["detect", "finetune", "generate", "jobs"].includes(name) ? name : "detect";
  for (const a of document.querySelectorAll(".tabs a")) a.setAttribute("aria-selected", String(a.dataset.tab === tab));
  for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== `tab-${tab}`;
  if (sessionStorage.getItem(KEY_STORE) === null) return;
  if (tab === "jobs") loadJobs(false);
  if (tab === "finetune" && arg && (!ft.job || ft.job.id !== arg)) watchFinetuneById(arg);
  if (tab === "generate") loadModels();
  if (tab === "detect") loadDetectionModels();
}
window.addEventListener("hashchange", showTab);

// ------------------------------------------------------------------ Detect

const detect = { files: [], body: null, timer: null, seq: 0 };

function detectParams() {
  const params = { thresh: $("det-thresh").value, box_thresh: $("det-box-thresh").value,
                   unclip_ratio: $("det-unclip").value, box_type: $("det-box-type").value };
  const pages = $("det-pages").value.trim();
  if (pages) params.pages = pages;
  if ($("det-model").value) params.model = $("det-model").value;
  return params;
}

async function runDetect() {
  if (!detect.files.length) return;
  const seq = ++detect.seq;
  const form = new FormData();
  for (const f of detect.files) form.append("images", f, f.name);
  for (const [k, v] of Object.entries(detectParams())) form.append(k, v);
  form.append("previews", "true");  // PDF and TIFF pages come back as JPEGs: the browser cannot draw those files
  $("detect-status").textContent = "detecting…";
  showError("detect-error", null);
  try {
    const t0 = performance.now();
    const body = await getJSON("/detect", { method: "POST", form });
    if (seq !== detect.seq) return;  // a newer request (threshold change) superseded this one
    detect.body = body;
    await renderDetections(body);
    $("detect-download").disabled = false;
    $("detect-status").textContent = `${body.model} · ${body.precision} · ${Math.round(performance.now() - t0)} ms`;
  } catch (e) {
    if (seq !== detect.seq) return;
    $("detect-status").textContent = "";
    showError("detect-error", e);
  }
}

function dataUrlBlob(url) {  // decoded here: the console's CSP lets no data: URL load as an image
  const [head, b64] = url.split(",", 2);
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: head.slice(5).split(";")[0] });
}

async function renderDetections(body) {
  const box = $("detect-results");
  const cards = [];
  for (const res of body.results) {  // one per image, and one per page of a PDF or TIFF
    const file = detect.files[res.source];
    const canvas = el("canvas", { class: "det-canvas", "data-boxes": res.boxes.length,
                                  "data-page": res.page == null ? "" : res.page });
    let scale = await drawImageTo(canvas, res.preview ? dataUrlBlob(res.preview) : file);
    if (res.preview) scale = canvas.width / res.width;  // the preview may be smaller than the page
    drawBoxes(canvas.getContext("2d"), res.boxes, scale);
    const name = res.page == null ? file.name : `${file.name} · page ${res.page}`;
    cards.push(el("figure", { class: "card det-card" }, canvas,
      el("figcaption", {}, el("strong", {}, name), ` ${res.width}×${res.height} · `,
         el("span", { class: "box-count" }, `${res.boxes.length} box${res.boxes.length === 1 ? "" : "es"}`))));
  }
  box.replaceChildren(...cards);
}

function drawBoxes(ctx, boxes, scale) {
  const lw = Math.max(2, Math.round(Math.max(ctx.canvas.width, ctx.canvas.height) / 400));
  ctx.lineWidth = lw; ctx.font = `${Math.max(11, lw * 6)}px sans-serif`; ctx.textBaseline = "bottom";
  for (const b of boxes) {
    const pts = b.points.map(([x, y]) => [x * scale, y * scale]);
    ctx.strokeStyle = "#12b76a"; ctx.fillStyle = "rgba(18,183,106,0.12)";
    ctx.beginPath(); pts.forEach(([x, y], j) => (j ? ctx.lineTo(x, y) : ctx.moveTo(x, y))); ctx.closePath();
    ctx.fill(); ctx.stroke();
    const label = b.score.toFixed(2);
    const x = Math.min(...pts.map((p) => p[0])), y = Math.min(...pts.map((p) => p[1]));
    const w = ctx.measureText(label).width + 6, h = Math.max(11, lw * 6) + 2;
    ctx.fillStyle = "#12b76a"; ctx.fillRect(x, Math.max(0, y - h), w, h);
    ctx.fillStyle = "#fff"; ctx.fillText(label, x + 3, Math.max(h, y) - 1);
  }
}

async function loadDetectionModels() {
  try {
    const { detection } = await getJSON("/models");
    const select = $("det-model"), keep = select.value;
    const loaded = detection ? detection.models.filter((m) => m.ready) : [];
    select.replaceChildren(el("option", { value: "" }, "default"), ...loaded.map((m) => el("option", { value: m.id },
      `${m.id} · ${m.precision}${m.default ? " (default)" : ""}`)));
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  } catch (err) { showError("detect-error", err); }
}

function setDetectFiles(files) {
  if (!files.length) { showError("detect-error", "Those are not images: drop PNG, JPEG, WebP, TIFF or PDF files."); return; }
  detect.files = files; detect.body = null;
  $("detect-run").disabled = false; $("detect-download").disabled = true;
  runDetect();
}

wireDropzone("detect-drop", "detect-files", setDetectFiles, detectableFiles);
$("detect-run").addEventListener("click", runDetect);
for (const id of ["det-thresh", "det-box-thresh", "det-unclip"]) {
  const input = $(id);
  wireRangeOutput(input);
  input.addEventListener("change", () => { clearTimeout(detect.timer); detect.timer = setTimeout(runDetect, 150); });
}
$("det-box-type").addEventListener("change", runDetect);
$("det-pages").addEventListener("change", runDetect);
$("det-model").addEventListener("change", runDetect);
$("detect-download").addEventListener("click", () => {
  if (!detect.body) return;
  const out = { ...detect.body, params: detectParams(), files: detect.files.map((f) => f.name) };
  saveBlob(new Blob([JSON.stringify(out, null, 2)], { type: "application/json" }), "detections.json");
});

// ------------------------------------------------------------------ Fine-tune

const ft = { files: [], job: null, losses: [], abort: null };

async function setFinetuneFiles(files) {
  ft.files = [...ft.files, ...files].slice(0, 20);
  const thumbs = [];
  for (const f of ft.files) {
    const c = el("canvas", { class: "thumb", title: f.name });
    await drawImageTo(c, f, 96);
    thumbs.push(c);
  }
  $("ft-thumbs").replaceChildren(...thumbs);
  $("ft-status").textContent = `${ft.files.length} image${ft.files.length === 1 ? "" : "s"}`;
}
wireDropzone("ft-drop", "ft-files", setFinetuneFiles);

function syncPriorFields() {  // class images only matter with prior preservation
  for (const id of ["ft-class-images", "ft-class-steps"]) $(id).disabled = !$("ft-prior").checked;
}
$("ft-prior").addEventListener("change", syncPriorFields);
syncPriorFields();

$("finetune-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError("ft-error", null);
  if (ft.files.length < 3 || ft.files.length > 20) {
    showError("ft-error", `Fine-tuning needs 3–20 images of the subject; ${ft.files.length} chosen.`);
    return;
  }
  const config = {
    instance_prompt: $("ft-instance").value.trim(), class_prompt: $("ft-class").value.trim(),
    method: $("ft-method").value, max_train_steps: Number($("ft-steps").value),
    resolution: Number($("ft-resolution").value), with_prior_preservation: $("ft-prior").checked,
  };
  if (config.with_prior_preservation) {
    config.num_class_images = Number($("ft-class-images").value);
    config.class_images_inference_steps = Number($("ft-class-steps").value);
  }
  const form = new FormData();
  for (const f of ft.files) form.append("images", f, f.name);
  form.append("config", JSON.stringify(config));
  $("ft-submit").disabled = true;
  try {
    const job = await getJSON("/finetune", { method: "POST", form });
    history.replaceState(null, "", `#finetune/${job.id}`);  // a reload follows the same job
    watchFinetune(job);
  } catch (err) {
    showError("ft-error", err);
    $("ft-submit").disabled = false;
  }
});

function setFtState(status) {
  const badge = $("ft-state");
  badge.textContent = status; badge.className = `badge ${status}`;
  $("ft-cancel").hidden = TERMINAL.has(status);
}

const PHASE_NAMES = { preparing: "preparing", class_images: "class images", training: "training",
                      exporting: "exporting" };

// A fine-tune's progress line: its current phase with that phase's own numbers (a job without phases: its
// steps), the loss and it/s while training, images/s while making class images, and the phase's ETA.
function phaseText(p, m) {
  const cur = (p.phases || {})[p.phase] || p;
  const training = !p.phase || p.phase === "training";
  const eta = cur.eta_s != null ? ` · eta ${Math.round(cur.eta_s)} s` : "";
  const loss = training && typeof m.loss === "number" ? ` · loss ${m.loss.toFixed(4)}` : "";
  const rate = training ? (typeof m.it_per_s === "number" ? m.it_per_s : cur.it_per_s) : cur.it_per_s;
  const unit = p.phase === "class_images" ? "images/s" : "it/s";
  const speed = typeof rate === "number" && (training || p.phase === "class_images")
    ? ` · ${rate.toFixed(2)} ${unit}` : "";
  const where = p.phase ? `${PHASE_NAMES[p.phase] || p.phase} · ` : "";
  const what = p.phase && p.phase !== "training" ? "" : "step ";
  return { step: cur.step || 0, total: cur.total || 0,
           line: `${where}${what}${cur.step || 0} / ${cur.total || 0}${loss}${speed}${eta}` };
}

async function watchFinetune(job) {
  if (ft.abort) ft.abort.abort();
  ft.job = job; ft.losses = []; ft.abort = new AbortController();
  $("ft-progress-box").hidden = false;
  $("ft-job").textContent = `job ${job.id}`;
  $("ft-progress").value = 0; $("ft-progress-text").textContent = "queued";
  setFtState(job.status); drawChart();
  try {
    const final = await runToEnd(job.id, (name, data) => {
      if (name === "progress") {
        const p = data.progress || {}, m = data.metrics || {};
        const text = phaseText(p, m);
        if (text.total) { $("ft-progress").max = text.total; $("ft-progress").value = text.step; }
        if (typeof m.loss === "number" && (!p.phase || p.phase === "training")) {
          ft.losses.push([p.step, m.loss]); drawChart();
        }
        $("ft-progress-text").textContent = text.line;
        $("ft-progress-box").dataset.phase = p.phase || "";
      } else if (name === "status") {
        setFtState(data.status);
        if (!ft.losses.length && $("ft-progress").value === 0) $("ft-progress-text").textContent = data.status;
      }
    }, ft.abort.signal);
    setFtState(final.status);
    if (final.status === "failed") {
      const err = final.error || {};
      $("ft-progress-text").textContent = "failed";
      showError("ft-error", `Fine-tune failed: ${err.code || "error"}: ${err.message || "no message"}`);
    } else if (final.status === "succeeded") {
      $("ft-progress").value = $("ft-progress").max;
      $("ft-progress-text").textContent = `done: model ${final.id} is in the Generate tab's model picker`;
    } else {
      $("ft-progress-text").textContent = "canceled";
    }
  } catch (err) {
    if (err.name !== "AbortError") showError("ft-error", err);
  } finally {
    $("ft-submit").disabled = false;
  }
}

async function watchFinetuneById(id) {
  showError("ft-error", null);
  try { watchFinetune(await getJSON(`/jobs/${encodeURIComponent(id)}`)); } catch (err) { showError("ft-error", err); }
}

$("ft-cancel").addEventListener("click", async () => {
  if (!ft.job) return;
  try {
    const job = await getJSON(`/jobs/${encodeURIComponent(ft.job.id)}/cancel`, { method: "POST" });
    $("ft-progress-text").textContent = job.status === "canceled" ? "canceled" : "cancel requested…";
    if (job.status === "canceled") setFtState("canceled");
  } catch (err) { showError("ft-error", err); }
});

function drawChart() {
  const canvas = $("ft-chart"), ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = 34;
  ctx.clearRect(0, 0, W, H);
  ctx.strokeStyle = "#c9ced6"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(pad, 8); ctx.lineTo(pad, H - pad + 8); ctx.lineTo(W - 8, H - pad + 8); ctx.stroke();
  ctx.fillStyle = "#667085"; ctx.font = "11px sans-serif";
  ctx.fillText("loss", pad + 6, 16);
  const pts = ft.losses;
  if (!pts.length) { ctx.fillText("waiting for the first step…", pad + 10, H / 2); return; }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-6);
  const X = (x) => pad + ((x - x0) / (x1 - x0)) * (W - pad - 12);
  const Y = (y) => 8 + (1 - (y - y0) / (y1 - y0)) * (H - pad);
  ctx.fillText(y1.toPrecision(3), 2, 24); ctx.fillText(y0.toPrecision(3), 2, H - pad + 6);
  ctx.fillText(`step ${x1}`, W - 60, H - 6);
  ctx.strokeStyle = "#3b5bdb"; ctx.lineWidth = 2; ctx.beginPath();
  pts.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
  ctx.stroke();
}

// ------------------------------------------------------------------ Generate

async function loadModels(selected) {
  try {
    const { models } = await getJSON("/models");
    const select = $("gen-model"), keep = selected || select.value;
    select.replaceChildren(...models.map((m) => el("option", { value: m.id },
      m.kind === "base" ? `base (${m.base_model || "default"})` : `${m.id} — ${m.instance_prompt || m.method || "fine-tune"}`)));
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
    $("gen-model-delete").disabled = select.value === "base";
  } catch (err) { showError("gen-error", err); }
}

$("gen-model").addEventListener("change", () => { $("gen-model-delete").disabled = $("gen-model").value === "base"; });
$("gen-model-delete").addEventListener("click", async () => {
  const id = $("gen-model").value;
  if (id === "base" || !confirm(`Delete the fine-tuned model ${id}? Its weights are removed for good.`)) return;
  showError("gen-error", null);
  try { await api(`/models/${encodeURIComponent(id)}`, { method: "DELETE" }); await loadModels("base"); }
  catch (err) { showError("gen-error", err); }
});

wireRangeOutput($("gen-guidance"));

$("generate-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError("gen-error", null); $("gen-warning").hidden = true;
  const num = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  const body = {
    prompt: $("gen-prompt").value.trim(), negative_prompt: $("gen-negative").value.trim() || undefined,
    guidance_scale: num("gen-guidance"), num_inference_steps: num("gen-steps"), seed: num("gen-seed"),
    width: num("gen-width"), height: num("gen-height"), num_images: num("gen-count"), model: $("gen-model").value,
  };
  $("gen-submit").disabled = true;
  try {
    let job = await getJSON("/generate", { method: "POST", json: body });
    $("gen-status").textContent = `job ${job.id}: ${job.status}…`;
    job = await runToEnd(job.id, (name, data) => {
      if (name === "status") $("gen-status").textContent = `job ${job.id}: ${data.status}…`;
      if (name === "progress" && data.progress && data.progress.total)
        $("gen-status").textContent = `job ${job.id}: step ${data.progress.step} / ${data.progress.total}`;
    });
    $("gen-status").textContent = `job ${job.id}: ${job.status}`;
    if (job.status !== "succeeded") {
      const err = job.error || {};
      throw new Error(job.status === "failed" ? `Generation failed: ${err.code}: ${err.message}` : `Generation ${job.status}`);
    }
    if (job.result.warning) { $("gen-warning").textContent = job.result.warning; $("gen-warning").hidden = false; }
    await addToGallery(job);
  } catch (err) {
    showError("gen-error", err);
  } finally {
    $("gen-submit").disabled = false;
  }
});

async function addToGallery(job) {
  const cards = [];
  for (const [i, image] of (job.result.images || []).entries()) {
    const blob = await (await api(samePath(image.url))).blob();
    const canvas = el("canvas", { class: "gen-image" });
    await drawImageTo(canvas, blob, 1024);
    const name = `${job.id}-${i}.png`;
    cards.push(el("figure", { class: "card gen-card" }, canvas,
      el("figcaption", {},
        el("span", { class: "seed" }, `seed ${image.seed}`), " ",
        el("button", { type: "button", class: "link", onclick: () => { $("gen-seed").value = image.seed; } }, "reuse seed"), " ",
        el("button", { type: "button", class: "download", onclick: () => saveBlob(blob, name) }, "download"),
        el("div", { class: "muted small" }, job.spec.params.prompt))));
  }
  $("gen-gallery").prepend(...cards);
}

// ------------------------------------------------------------------ Jobs

const jobsState = { cursor: null };

function jobDetails(job) {
  if (job.error) return el("span", { class: "error-inline" }, `${job.error.code}: ${job.error.message}`);
  const res = job.result || {};
  const parts = [];
  for (const [i, image] of (res.images || []).entries())
    parts.push(el("button", { type: "button", class: "link", onclick: () => downloadArtifact(image.url, `${job.id}-${i}.png`) }, `image ${i} (seed ${image.seed})`), " ");
  if (job.type === "finetune" && !TERMINAL.has(job.status))
    parts.push(el("a", { href: `#finetune/${job.id}`, class: "watch" }, "watch progress"));
  if (job.type === "finetune" && job.status === "succeeded")
    parts.push(el("a", { href: "#generate", onclick: () => loadModels(job.id) }, "generate with this model"));
  if (!parts.length && job.metrics && typeof job.metrics.loss === "number") parts.push(`loss ${job.metrics.loss.toFixed(4)}`);
  return el("span", {}, ...parts);
}

async function downloadArtifact(url, filename) {
  try { saveBlob(await (await api(samePath(url))).blob(), filename); } catch (err) { showError("jobs-error", err); }
}

function jobRow(job) {
  const p = job.progress || {};
  return el("tr", { "data-job": job.id },
    el("td", {}, el("button", { type: "button", class: "link mono", onclick: () => showJob(job.id) }, job.id)),
    el("td", {}, job.type),
    el("td", {}, el("span", { class: `badge ${job.status}` }, job.status)),
    el("td", {}, fmtTime(job.created_at)),
    el("td", {}, job.status === "running" && p.phase && p.phase !== "training" && (p.phases || {})[p.phase]
      ? `${PHASE_NAMES[p.phase] || p.phase} ${p.phases[p.phase].step} / ${p.phases[p.phase].total}`
      : p.total ? `${p.step} / ${p.total}` : ""),
    el("td", {}, jobDetails(job)),
    el("td", {}, TERMINAL.has(job.status) ? "" :
      el("button", { type: "button", class: "small", onclick: () => cancelJob(job.id) }, "cancel"),
      el("button", { type: "button", class: "small danger", "data-action": "delete",
                     onclick: () => deleteJob(job.id) }, "delete")));
}

async function loadJobs(more) {
  showError("jobs-error", null);
  const params = new URLSearchParams({ limit: "20" });
  if ($("jobs-type").value) params.set("type", $("jobs-type").value);
  if (more && jobsState.cursor) params.set("cursor", jobsState.cursor);
  try {
    const body = await getJSON(`/jobs?${params}`);
    const tbody = $("jobs-table").tBodies[0];
    const rows = body.jobs.map(jobRow);
    if (more) tbody.append(...rows); else tbody.replaceChildren(...rows);
    jobsState.cursor = body.next_cursor;
    $("jobs-more").hidden = !body.next_cursor;
    $("jobs-status").textContent = tbody.rows.length ? `${tbody.rows.length} jobs` : "no jobs yet";
  } catch (err) { showError("jobs-error", err); }
}

async function showJob(id) {
  try {
    const job = await getJSON(`/jobs/${encodeURIComponent(id)}`);
    $("job-detail").textContent = JSON.stringify(job, null, 2);
    $("job-detail").hidden = false;
  } catch (err) { showError("jobs-error", err); }
}

async function cancelJob(id) {
  try { await getJSON(`/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" }); await loadJobs(false); }
  catch (err) { showError("jobs-error", err); }
}

async function deleteJob(id) {
  if (!confirm(`Delete job ${id} and all its files? A running job is canceled first.`)) return;
  try { await api(`/jobs/${encodeURIComponent(id)}`, { method: "DELETE" }); await loadJobs(false); }
  catch (err) { showError("jobs-error", err); }
}

$("jobs-refresh").addEventListener("click", () => loadJobs(false));
$("jobs-type").addEventListener("change", () => loadJobs(false));
$("jobs-more").addEventListener("click", () => loadJobs(true));

// ------------------------------------------------------------------ start

(async function start() {
  showTab();
  const key = sessionStorage.getItem(KEY_STORE);
  if (key === null) { askForKey(); return; }
  try { await connect(key); showTab(); } catch (err) { askForKey(err.message); }
})();
