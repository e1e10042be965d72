// gan_monitor paint: the page's script (plain JavaScript, no build step, no external assets).
//
// The page keeps the strokes of the current sample; after each stroke (and after undo) it
// sends all of them to POST /api/edit, which applies them in order at the generator's layer
// and answers the edited image, its segmentation and the change of the last stroke's
// concept in the last stroke's painted region.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null, samples: new Map(), current: null, strokes: [], edited: null,
  mask: null, drawing: false, last: null, request: 0,
};

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("could not decode an image from the server"));
    img.src = url;
  });
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
  if (!response.ok) throw new Error(data.error || data.detail || `HTTP ${response.status}`);
  return data;
}

function showError(err) { $("status").textContent = err ? String(err.message || err) : ""; }

async function addSample(data) {
  const entry = {id: data.id, seed: data.seed, image: await loadImage(data.image),
                 segmentation: await loadImage(data.segmentation)};
  state.samples.set(data.id, entry);
  const thumb = document.createElement("img");
  thumb.src = data.image;
  thumb.alt = `sample ${data.id}`;
  thumb.title = `sample ${data.id} (seed ${data.seed})`;
  thumb.dataset.id = data.id;
  thumb.addEventListener("click", () => selectSample(data.id));
  $("thumbs").appendChild(thumb);
}

function selectSample(id) {
  state.current = id;
  state.strokes = [];
  state.edited = null;
  state.request += 1;  // answers for the previous sample are ignored
  for (const img of $("thumbs").children) img.classList.toggle("selected", Number(img.dataset.id) === id);
  showChange(null);
  render();
}

function concept() { return state.info.concepts.find((c) => c.name === $("concept").value); }

function conceptChanged() {
  const c = concept();
  if (!c) return;
  const units = $("units");
  units.max = c.units.length;
  units.value = c.units.length;
  $("ranking").textContent = `units ranked by ${state.info.ranking}; ${c.name}: ${c.units.join(", ")}`;
}

function draw(canvas, image, segmentation, preview) {
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!image) return;
  ctx.globalAlpha = 1;
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  if ($("overlay").checked && segmentation) {
    ctx.globalAlpha = 0.5;
    ctx.drawImage(segmentation, 0, 0, canvas.width, canvas.height);
  }
  if (preview) {
    ctx.globalAlpha = 0.55;
    ctx.drawImage(preview, 0, 0, canvas.width, canvas.height);
  }
  ctx.globalAlpha = 1;
}

function render() {
  $("legend").hidden = !$("overlay").checked;
  const sample = state.samples.get(state.current);
  if (!sample) return;
  draw($("original"), sample.image, sample.segmentation, null);
  const shown = state.edited || sample;
  draw($("edited"), shown.image, shown.segmentation, state.drawing ? state.mask : null);
}

// ---- painting ---------------------------------------------------------------------
function imagePoint(event) {
  const canvas = $("edited"), rect = canvas.getBoundingClientRect();
  const [h, w] = state.info.image_size;
  return [(event.clientX - rect.left) / rect.width * w, (event.clientY - rect.top) / rect.height * h];
}

function brushMode() { return document.querySelector("input[name=mode]:checked").value; }

function paintTo(point) {
  const ctx = state.mask.getContext("2d");
  const size = Number($("size").value);
  ctx.fillStyle = ctx.strokeStyle = brushMode() === "draw" ? "#00c853" : "#d50000";
  ctx.lineWidth = size;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  if (state.last) {
    ctx.moveTo(state.last[0], state.last[1]);
    ctx.lineTo(point[0], point[1]);
    ctx.stroke();
  } else {
    ctx.arc(point[0], point[1], size / 2, 0, 2 * Math.PI);
    ctx.fill();
  }
  state.last = point;
  render();
}

function startStroke(event) {
  if (!state.info || !concept() || state.current === null || event.button !== 0) return;
  $("edited").setPointerCapture(event.pointerId);
  const [h, w] = state.info.image_size;
  state.mask.width = w;
  state.mask.height = h;
  state.drawing = true;
  state.last = null;
  paintTo(imagePoint(event));
}

function maskRows() {
  const [h, w] = state.info.image_size;
  const alpha = state.mask.getContext("2d").getImageData(0, 0, w, h).data;
  const rows = [];
  let painted = false;
  for (let y = 0; y < h; y++) {
    const row = new Array(w);
    for (let x = 0; x < w; x++) {
      const v = Math.round(alpha[4 * (y * w + x) + 3] / 2.55) / 100;
      row[x] = v;
      painted = painted || v > 0;
    }
    rows.push(row);
  }
  return painted ? rows : null;
}

function endStroke() {
  if (!state.drawing) return;
  state.drawing = false;
  state.last = null;
  const mask = maskRows();
  render();
  if (!mask) return;
  const c = concept();
  state.strokes.push({concept: c.name, mode: brushMode(), units: Number($("units").value), mask});
  requestEdit();
}

async function requestEdit() {
  const ticket = ++state.request;
  const sampleId = state.current;
  if (!state.strokes.length) {
    state.edited = null;
    showChange(null);
    render();
    return;
  }
  $("status").textContent = "";
  document.body.classList.add("busy");
  try {
    const strokes = state.strokes.map((s) => ({concept: s.concept, mode: s.mode, units: s.units, mask: s.mask}));
    const data = await api("/api/edit", {sample: sampleId, strokes});
    const edited = {image: await loadImage(data.image), segmentation: await loadImage(data.segmentation)};
    if (ticket !== state.request) return;  // a newer stroke, undo or sample was asked for meanwhile
    state.edited = edited;
    state.strokes[state.strokes.length - 1].result = data.change;
    showChange(data.change);
    render();
  } catch (err) {
    if (ticket !== state.request) return;
    state.strokes.pop();  // the server refused it: drop it so the next stroke can go through
    const previous = state.strokes[state.strokes.length - 1];
    showChange(previous ? previous.result : null);
    showError(err);
  } finally {
    if (ticket === state.request) document.body.classList.remove("busy");
  }
}

function fmt(x) { return Math.round(x * 10) / 10; }

function showChange(change) {
  const out = $("change");
  out.dataset.strokes = state.strokes.length;
  if (!change) {
    out.dataset.change = "";
    out.textContent = "Paint a stroke on the edited image.";
  } else {
    const pct = (x) => `${Math.round(100 * x)} %`;
    const sign = change.change > 0 ? "+" : "";
    out.dataset.change = change.change;
    out.textContent = `${change.concept} (${change.mode}, ${change.units} units): ${change.concept} pixels in the ` +
      `painted region ${fmt(change.before)} → ${fmt(change.after)} of ${fmt(change.region_pixels)} ` +
      `(${sign}${fmt(change.change)} px; ${pct(change.fraction_before)} → ${pct(change.fraction_after)}); ` +
      `unedited image: ${fmt(change.original)}`;
  }
  const history = $("history");
  history.textContent = "";
  for (const s of state.strokes) {
    const li = document.createElement("li");
    const r = s.result;
    li.textContent = `${s.mode} ${s.concept}` + (r ? `: ${r.change > 0 ? "+" : ""}${fmt(r.change)} px` : "");
    history.appendChild(li);
  }
}

// ---- set-up -----------------------------------------------------------------------
async function moreSamples() {
  try {
    const data = await api("/api/samples", {count: 3});
    for (const s of data.samples) await addSample(s);
    const held = new Set(data.held);
    for (const img of [...$("thumbs").children]) {
      if (!held.has(Number(img.dataset.id))) { state.samples.delete(Number(img.dataset.id)); img.remove(); }
    }
    selectSample(data.samples[0].id);
  } catch (err) { showError(err); }
}

function describe(info) {
  const d = info.dissection || {};
  const how = d.threshold ? ` (dissected on ${d.n} samples, ${d.threshold} threshold, IoU cutoff ${d.cutoff})` : "";
  $("about").textContent = `Layer ${info.layer}: ${info.units} units at ${info.layer_size.join("×")}, images ` +
    `${info.image_size.join("×")}${how}. Drawing sets a concept's units to their mean activation where the ` +
    `concept is present; removing sets them to 0, where you paint.`;
  const select = $("concept");
  for (const c of info.concepts) {
    const option = document.createElement("option");
    option.value = c.name;
    option.textContent = `${c.name} — ${c.units.length} unit${c.units.length === 1 ? "" : "s"}`;
    select.appendChild(option);
  }
  if (!info.concepts.length) showError("No unit of this layer is labelled with a concept: nothing to paint with.");
  const legend = $("legend");
  for (const p of info.palette) {
    const row = document.createElement("div");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = p.color;
    row.append(swatch, p.name);
    legend.appendChild(row);
  }
}

async function main() {
  try {
    state.info = await api("/api/info");
    const [h, w] = state.info.image_size;
    const scale = Math.max(1, Math.ceil(384 / Math.max(h, w)));
    for (const id of ["original", "edited"]) { $(id).width = w * scale; $(id).height = h * scale; }
    state.mask = document.createElement("canvas");
    describe(state.info);
    conceptChanged();
    for (const id of state.info.samples) await addSample(await api(`/api/samples/${id}`));
    if (state.info.samples.length) selectSample(state.info.samples[0]);
    document.body.dataset.ready = "1";
  } catch (err) { showError(err); }
}

$("concept").addEventListener("change", conceptChanged);
$("size").addEventListener("input", () => { $("size-value").textContent = $("size").value; });
$("overlay").addEventListener("change", render);
$("undo").addEventListener("click", () => { state.strokes.pop(); requestEdit(); showChange(null); });
$("reset").addEventListener("click", () => { state.strokes = []; requestEdit(); });
$("more").addEventListener("click", moreSamples);
$("edited").addEventListener("pointerdown", startStroke);
$("edited").addEventListener("pointermove", (e) => { if (state.drawing) paintTo(imagePoint(e)); });
$("edited").addEventListener("pointerup", endStroke);
$("edited").addEventListener("pointercancel", endStroke);
main();
