// zoomrl view: the list of trajectories with its filters, and one trajectory in full.
// The selection and the filters live in the URL hash (#file=F&line=L&f-zooms-min=1...), so a view
// can be linked and reloaded.
"use strict";

// One colour per call, in call order (the number drawn beside a box is the call's number).
const BOX_COLOURS = ["#ff00ff", "#ff8c00", "#0050ff", "#00a000", "#e00000", "#8000c0"];
const SVG = "http://www.w3.org/2000/svg";

let data = { items: [], files: [] };
let base = "";  // the folder of the shown record's file: its image paths are relative to it

const src = (path) => "/files/" + base + path;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

const fmt = (x) => (typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toFixed(3)) : String(x));
const boxText = (b) => "[" + b.map((v) => Math.round(v)).join(", ") + "]";
const where = (it) => (it.step !== null && it.step !== undefined ? "step " + it.step
  : it.eval_set ? it.eval_set + (it.category ? " / " + it.category : "") : "rollout");

const FILTERS = ["f-file", "f-reward-min", "f-reward-max", "f-correct", "f-zooms-min", "f-zooms-max", "f-end"];

// The hash for the filters as set now and the trajectory at (file, line), if any.
function hashFor(file, line) {
  const h = new URLSearchParams();
  for (const id of FILTERS) {
    const v = document.getElementById(id).value;
    if (v !== "") h.set(id, v);
  }
  if (file !== undefined) { h.set("file", file); h.set("line", line); }
  return "#" + h.toString();
}

function filtersChanged() {
  const sel = selected();
  history.replaceState(null, "", sel ? hashFor(sel.file, sel.line) : hashFor());
  renderList();
}

function selected() {
  const h = new URLSearchParams(location.hash.slice(1));
  return h.has("file") ? { file: +h.get("file"), line: +h.get("line") } : null;
}

function numberOr(id, fallback) {
  const v = document.getElementById(id).value;
  return v === "" ? fallback : +v;
}

function passes(it) {
  const file = document.getElementById("f-file").value;
  const correct = document.getElementById("f-correct").value;
  const end = document.getElementById("f-end").value;
  return (file === "" || it.file === +file)
    && it.reward >= numberOr("f-reward-min", -Infinity) && it.reward <= numberOr("f-reward-max", Infinity)
    && (correct === "" || it.correct === (correct === "yes"))
    && it.zooms >= numberOr("f-zooms-min", 0) && it.zooms <= numberOr("f-zooms-max", Infinity)
    && (end === "" || it.end_reason === end);
}

function renderList() {
  const list = document.getElementById("list");
  list.replaceChildren();
  const shown = data.items.filter(passes);
  document.getElementById("count").textContent = shown.length + " of " + data.items.length + " trajectories";
  const sel = selected();
  let heading = null, section = null;
  for (const it of shown) {
    const label = (data.files.length > 1 ? data.files[it.file] + " · " : "") + where(it);
    if (label !== heading) {
      heading = label;
      section = el("div", { class: "step" }, el("h3", { text: label }));
      list.append(section);
    }
    const mark = el("span", { class: it.correct ? "ok" : "bad", text: it.correct ? "✓" : "✗" });
    const link = el("a", { class: "item", href: hashFor(it.file, it.line),
                           "data-file": it.file, "data-line": it.line },
      mark, " " + it.group_id + " #" + it.index + " · r " + fmt(it.reward) + " · " + it.zooms + " zoom"
        + (it.zooms === 1 ? "" : "s") + (it.tool_errors ? " (" + it.tool_errors + " failed)" : "")
        + " · " + it.end_reason);
    if (sel && sel.file === it.file && sel.line === it.line) link.classList.add("selected");
    section.append(link);
  }
}

function fillSelect(id, values, labels) {
  const select = document.getElementById(id);
  select.replaceChildren(el("option", { value: "", text: "any" }));
  values.forEach((v, i) => select.append(el("option", { value: v, text: labels ? labels[i] : v })));
}

// The original with every zoom box drawn over it: an SVG whose viewBox is the original's size in
// pixels, stretched over the displayed image, so boxes are given in original pixels as recorded.
function originalFigure(record, imageIndex) {
  const image = record.images[imageIndex];
  const [w, h] = image.size;
  const figure = el("div", { class: "figure", "data-image": imageIndex });
  figure.append(el("img", { class: "original", src: src(image.path), alt: "original " + imageIndex,
                            width: w, height: h }));
  const svg = svgEl("svg", { viewBox: "0 0 " + w + " " + h, preserveAspectRatio: "none" });
  // ground-truth boxes, like zoom boxes, are in the pixels of the last original (records.py)
  if (imageIndex === record.images.filter((image) => image.kind === "original").length - 1) {
    for (const box of record.gt_boxes || []) {
      svg.append(svgEl("rect", { class: "gt-box", x: box[0], y: box[1], width: box[2] - box[0],
                                 height: box[3] - box[1] }));
    }
  }
  record.tool_calls.forEach((call, j) => {
    if (!call.box_original || call.box_image !== imageIndex) return;
    const [x1, y1, x2, y2] = call.box_original;
    const colour = BOX_COLOURS[j % BOX_COLOURS.length];
    svg.append(svgEl("rect", { class: "box", "data-call": j + 1, x: x1, y: y1, width: x2 - x1,
                               height: y2 - y1, stroke: colour }));
    figure.append(el("span", { class: "box-label", "data-call": j + 1, text: String(j + 1),
      style: "left:" + (100 * x1 / w) + "%;top:" + (100 * y1 / h) + "%;background:" + colour }));
  });
  figure.append(svg);
  return figure;
}

function cropFigure(record, call, j) {
  const image = record.images[call.image_index];
  return el("figure", { class: "crop", "data-call": j + 1 },
    el("img", { src: src(image.path), alt: "crop of call " + (j + 1), width: image.size[0],
                height: image.size[1] }),
    el("figcaption", { text: "call " + (j + 1) + " · " + call.name
      + (call.box_original ? " · box " + boxText(call.box_original) + " in original pixels" : "")
      + " · " + image.size[0] + "×" + image.size[1] + " as the model saw it" }));
}

function turnBlock(record, turn, i) {
  const block = el("div", { class: "turn" }, el("div", { class: "caption", text: "turn " + (i + 1) }),
                   el("pre", { text: turn.text }));
  if (turn.call === null) return block;
  const call = record.tool_calls[turn.call];
  block.append(el("div", { class: "call", text: "call " + (turn.call + 1) + ": " + (call.name || "(unreadable)")
    + " " + JSON.stringify(call.arguments) }));
  const observation = el("div", { class: "observation" });
  if (call.error) {
    observation.append(el("div", { class: "error", text: "Error: " + call.error }));
  } else if (call.image_index !== null && call.image_index !== undefined) {
    observation.append(el("img", { src: src(record.images[call.image_index].path),
                                   alt: "tool response of call " + (turn.call + 1) }));
  }
  const raw = el("details", {}, el("summary", { text: "tool response as the model read it" }),
                 el("pre", { text: turn.observation }));
  observation.append(raw);
  block.append(observation);
  return block;
}

function renderDetail(record, it) {
  const detail = document.getElementById("detail");
  const parts = el("table", { class: "parts" });
  const names = Object.keys(record.reward_parts);
  parts.append(el("tr", {}, el("th", { text: "reward" }), ...names.map((n) => el("th", { text: n }))));
  parts.append(el("tr", {}, el("td", { text: fmt(record.reward) }),
                  ...names.map((n) => el("td", { text: fmt(record.reward_parts[n]) }))));
  const facts = el("div", { class: "facts" },
    el("span", { text: where(record) }),
    el("span", { id: "policy-version", text: "policy version " + record.policy_version }),
    el("span", { text: "end: " + record.end_reason }),
    el("span", { text: record.num_turns + " turn(s), " + record.tool_calls.length + " tool call(s)" }),
    el("span", { text: record.response_tokens + " tokens sampled" }));
  const options = (record.choices || []).map((c, i) => String.fromCharCode(65 + i) + ". " + c).join("\n");
  const answer = "answer: " + record.answer + (record.prediction !== undefined ? " · predicted: "
    + record.prediction : "");
  detail.replaceChildren(
    el("h2", { text: record.sample_id + " · " + record.group_id + " #" + record.index }), facts, parts,
    el("div", { class: "question", text: record.question + (options ? "\n" + options : "") + "\n" + answer }));
  record.images.forEach((image, i) => {
    if (image.kind !== "original") return;
    detail.append(el("h3", { text: "original " + (i + 1) + " · " + image.size[0] + "×" + image.size[1]
      + " (the model saw " + image.model_size[0] + "×" + image.model_size[1] + ")" }),
      originalFigure(record, i));
  });
  const crops = el("div", { class: "crops" });
  record.tool_calls.forEach((call, j) => {
    if (!call.error && call.image_index !== null && call.image_index !== undefined) {
      crops.append(cropFigure(record, call, j));
    }
  });
  if (crops.children.length) detail.append(el("h3", { text: "images the tools gave back" }), crops);
  detail.append(el("h3", { text: "turns" }), ...record.turns.map((t, i) => turnBlock(record, t, i)));
  detail.dataset.file = it.file;
  detail.dataset.line = it.line;
}

async function showSelected() {
  renderList();
  const sel = selected();
  if (!sel) return;
  const it = data.items.find((x) => x.file === sel.file && x.line === sel.line) || sel;
  const response = await fetch("/api/trajectory?file=" + sel.file + "&line=" + sel.line);
  if (!response.ok) {
    document.getElementById("detail").replaceChildren(el("p", { class: "error", text: await response.text() }));
    return;
  }
  const file = data.files[sel.file] || "";
  base = file.includes("/") ? file.slice(0, file.lastIndexOf("/") + 1) : "";
  renderDetail(await response.json(), it);
}

async function load() {
  data = await (await fetch("/api/trajectories")).json();
  document.getElementById("root").textContent = data.root;
  fillSelect("f-file", data.files.map((_, i) => i), data.files);
  fillSelect("f-end", [...new Set(data.items.map((it) => it.end_reason))].sort());
  document.getElementById("problems").replaceChildren(...data.problems.map((p) => el("li", { text: p })));
  const h = new URLSearchParams(location.hash.slice(1));
  for (const id of FILTERS) if (h.has(id)) document.getElementById(id).value = h.get(id);
  document.getElementById("filters").addEventListener("input", filtersChanged);
  window.addEventListener("hashchange", showSelected);
  await showSelected();
  document.body.dataset.ready = "1";
}

load();
