// retllm serve: the page. Everything goes through the JSON API under /api/; every string
// from the index is put into the page as text (textContent), never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, imageUrl: null, like: null, likeName: null, detailId: null, seq: 0 };

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function fmt(value, digits = 3) {
  return value == null ? "" : Number(value).toFixed(digits);
}

function showMessage(text) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

// ---- status ------------------------------------------------------------------------
async function loadStatus() {
  try {
    const s = await api("/api/status");
    const parts = [];
    parts.push(el("span", { class: "items", text: `${s.items.total} items` }));
    parts.push(document.createTextNode(" · "));
    parts.push(el("span", { class: s.errors.count ? "errors warn" : "errors", text: `${s.errors.count} could not be indexed` }));
    if (s.errors.count) parts[parts.length - 1].title = s.errors.first.map((e) => `${e.path}: ${e.reason}`).join("\n");
    parts.push(document.createTextNode(" · CLIP "));
    parts.push(el("span", { class: "clip", text: s.models.clip ? `${s.models.clip.name} ${s.models.clip.variant}` : "none" }));
    parts.push(document.createTextNode(" · VLM "));
    const vlm = s.models.vlm;
    parts.push(el("span", { class: "vlm", text: vlm.available ? `${vlm.name || "configured"}${vlm.loaded ? " (loaded)" : ""}` : `off: ${vlm.reason}` }));
    $("status").replaceChildren(...parts);
    $("status").dataset.ready = "1";
    $("rerank").disabled = !vlm.available;
    if (!state.statusLoaded) {
      state.statusLoaded = true;
      $("k").value = String(s.defaults.k);
      if (![...$("k").options].some((o) => o.value === String(s.defaults.k))) $("k").append(el("option", { text: String(s.defaults.k) }));
      $("k").value = String(s.defaults.k);
      $("rerank").checked = Boolean(s.defaults.rerank && vlm.available);
      state.maxUpload = s.max_upload_bytes;
    }
    return s;
  } catch (err) {
    $("status").textContent = `status unavailable: ${err.message}`;
    return null;
  }
}

async function loadFolders() {
  try {
    const { folders } = await api("/api/folders");
    const select = $("folder");
    const current = select.value;
    select.replaceChildren(el("option", { value: "", text: "all folders" }), ...folders.map((f) => el("option", { value: f, text: f })));
    select.value = folders.includes(current) ? current : "";
  } catch (err) {
    showMessage(`folders: ${err.message}`);
  }
}

// ---- the query image ----------------------------------------------------------------
function setImage(file) {
  if (!file || !file.type.startsWith("image/")) return;
  if (state.maxUpload && file.size > state.maxUpload) {
    showMessage(`that image is over the ${Math.round(state.maxUpload / 1048576)} MB upload limit`);
    return;
  }
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.image = file;
  state.like = null;
  state.imageUrl = URL.createObjectURL(file);
  $("query-image").src = state.imageUrl;
  $("query-image").hidden = false;
  $("drop-label").textContent = file.name || "pasted image";
  $("clear-image").hidden = false;
  updateWeight();
}

function clearImage() {
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.image = state.imageUrl = state.like = null;
  $("query-image").hidden = true;
  $("query-image").removeAttribute("src");
  $("drop-label").textContent = "image query: drop, paste or choose";
  $("clear-image").hidden = true;
  $("file").value = "";
  updateWeight();
}

function updateWeight() {
  $("weight-box").hidden = !(state.image || state.like) || !$("q").value.trim();
  $("weight-value").textContent = Number($("weight").value).toFixed(2);
}

// ---- search -------------------------------------------------------------------------
function params() {
  const p = new URLSearchParams();
  const q = $("q").value.trim();
  if (q) p.set("q", q);
  if (state.like != null) p.set("like", String(state.like));
  if ((state.image || state.like != null) && q) p.set("image_weight", $("weight").value);
  p.set("k", $("k").value);
  const rerank = $("rerank").checked && !$("rerank").disabled;
  p.set("rerank", rerank ? "1" : "0");
  if (rerank) {
    p.set("rerank_k", $("rerank-k").value);
    p.set("enhance", $("enhance").value);
  }
  for (const name of ["after", "before", "folder"]) {
    const value = $(name).value.trim();
    if (value) p.set(name, value);
  }
  return { p, rerank };
}

let progressTimer = null;

function startProgress(rerank) {
  const t0 = performance.now();
  const box = $("progress");
  box.hidden = false;
  document.body.dataset.searching = "1";
  if (rerank) document.body.dataset.rerankProgressShown = "1";
  const tick = async () => {
    const seconds = ((performance.now() - t0) / 1000).toFixed(1);
    let what = rerank ? "reranking with the VLM" : "searching";
    if (rerank) {
      try {
        const s = await api("/api/status");
        if (s.busy) what = s.busy.what;
      } catch (err) {
        /* the status line is best effort */
      }
    }
    if (!box.hidden) $("progress-text").textContent = `${what}… ${seconds} s`;
  };
  tick();
  progressTimer = setInterval(tick, 500);
}

function stopProgress() {
  clearInterval(progressTimer);
  $("progress").hidden = true;
  delete document.body.dataset.searching;
}

async function runSearch() {
  const q = $("q").value.trim();
  if (!q && !state.image && state.like == null) {
    showMessage("type a query, or drop an image");
    return;
  }
  showMessage("");
  const { p, rerank } = params();
  const seq = ++state.seq;
  startProgress(rerank);
  try {
    let result;
    if (state.image) {
      const form = new FormData();
      for (const [key, value] of p) form.append(key, value);
      form.append("image", state.image, state.image.name || "query-image");
      result = await api("/api/search", { method: "POST", body: form });
    } else {
      result = await api(`/api/search?${p}`);
    }
    if (seq === state.seq) render(result);
  } catch (err) {
    if (seq === state.seq) showMessage(err.message);
  } finally {
    if (seq === state.seq) stopProgress();
  }
}

function movedBadge(hit) {
  if (hit.moved == null || hit.moved === 0) return null;
  const up = hit.moved > 0;
  return el("span", {
    class: `moved ${up ? "up" : "down"}`,
    title: `rank ${hit.coarse_rank} before reranking`,
    text: `${up ? "↑" : "↓"} ${Math.abs(hit.moved)} (was #${hit.coarse_rank})`,
  });
}

function scoreList(hit) {
  const dl = el("dl", { class: "scores" });
  const add = (label, cls, value) => dl.append(el("dt", { text: label }), el("dd", { class: cls, text: value }));
  add("CLIP", "clip", fmt(hit.clip_score != null ? hit.clip_score : hit.score));
  if (hit.p_true != null) add("P(True)", "p-true", fmt(hit.p_true));
  if (hit.entropy != null) add("entropy", "entropy", fmt(hit.entropy));
  if (hit.enhanced != null) add("enhanced", "enhanced", hit.enhanced ? "yes" : "no");
  if (hit.date) add(hit.date_source === "exif" ? "taken" : "date", "date", hit.date.slice(0, 10));
  return dl;
}

function basename(path) {
  const i = path.lastIndexOf("/");
  return i < 0 ? path : path.slice(i + 1);
}

function dirname(path) {
  const i = path.lastIndexOf("/");
  return i < 0 ? "" : path.slice(0, i);
}

function hitCard(hit) {
  const li = el("li", { class: "hit", "data-id": String(hit.id), "data-rank": String(hit.rank), "data-modality": hit.modality });
  if (hit.coarse_rank != null) li.dataset.coarseRank = String(hit.coarse_rank);
  if (hit.date) li.dataset.date = hit.date;
  if (hit.p_true != null) li.dataset.pTrue = String(hit.p_true);
  if (hit.thumbnail) {
    const img = el("img", { src: hit.thumbnail, alt: hit.path ? basename(hit.path) : "", loading: "lazy" });
    const open = el("button", { class: "thumb", type: "button", title: hit.path || "" }, img);
    open.addEventListener("click", () => openDetail(hit.id));
    li.append(open);
  }
  if (hit.text != null && hit.modality !== "image") li.append(el("blockquote", { class: "caption", text: hit.text }));
  li.append(el("div", { class: "head" }, el("span", { class: "rank", text: `#${hit.rank}` }), movedBadge(hit)));
  if (hit.path) {
    li.append(el("div", { class: "name", text: basename(hit.path) }));
    li.append(el("div", { class: "dir", text: dirname(hit.path) }));
  } else if (hit.item_id != null) {
    li.append(el("div", { class: "name", text: hit.item_id }));
  }
  li.append(scoreList(hit));
  if (hit.thumbnail) {
    const more = el("button", { class: "more", type: "button", text: "more like this" });
    more.addEventListener("click", () => moreLike(hit.id, hit.path));
    li.append(more);
  }
  return li;
}

function render(result) {
  const hits = result.hits;
  const what = [];
  if (result.query.text) what.push(`“${result.query.text}”`);
  if (result.query.like != null) what.push(`like ${state.likeName || `item ${result.query.like}`}`);
  if (result.query.image) what.push("the dropped image");
  const filters = ["after", "before", "folder"].filter((f) => result.query[f]).map((f) => `${f} ${result.query[f]}`);
  const summary = `${hits.length} result${hits.length === 1 ? "" : "s"} for ${what.join(" + ")}` +
    (filters.length ? ` (${filters.join(", ")})` : "") +
    ` · ${result.reranked ? "reranked by P(True)" : "CLIP ranking"} · ${result.seconds.toFixed(2)} s`;
  $("summary").textContent = summary;
  $("results").replaceChildren(...hits.map(hitCard));
  $("results").dataset.reranked = result.reranked ? "1" : "0";
  $("results").dataset.query = JSON.stringify(result.query);
  if (!hits.length) $("summary").textContent = `No results for ${what.join(" + ")}` + (filters.length ? ` (${filters.join(", ")})` : "");
}

function moreLike(id, path) {
  clearImage();
  state.like = id;
  state.likeName = path ? basename(path) : `item ${id}`;
  $("drop-label").textContent = `like ${state.likeName}`;
  $("clear-image").hidden = false;
  $("q").value = "";
  updateWeight();
  if ($("detail").open) $("detail").close();
  runSearch();
}

// ---- the larger view -----------------------------------------------------------------
async function openDetail(id) {
  try {
    const item = await api(`/api/items/${encodeURIComponent(id)}`);
    state.detailId = id;
    $("detail-image").src = item.image || "";
    $("detail-image").alt = item.name || "";
    $("detail-name").textContent = item.name || item.item_id || `item ${id}`;
    const meta = $("detail-meta");
    const rows = [
      ["path", item.path],
      [item.date_source === "exif" ? "taken" : "file date", item.date ? item.date.replace("T", " ") : null],
      ["EXIF date", item.exif && item.exif.datetime_original && item.exif.datetime_original.replace("T", " ")],
      ["camera", item.camera || (item.exif && item.exif.camera)],
      ["size", item.width && item.height ? `${item.width} × ${item.height}` : null],
      ["bytes", item.size != null ? item.size.toLocaleString() : null],
    ];
    meta.replaceChildren(...rows.filter(([, v]) => v).flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
    $("detail-more").onclick = () => moreLike(id, item.path);
    $("detail").showModal();
  } catch (err) {
    showMessage(err.message);
  }
}

// ---- wiring -------------------------------------------------------------------------
function wire() {
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    runSearch();
  });
  $("q").addEventListener("input", updateWeight);
  $("weight").addEventListener("input", updateWeight);
  $("drop").addEventListener("click", () => $("file").click());
  $("drop").addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file").click();
  });
  $("file").addEventListener("change", () => setImage($("file").files[0]));
  $("clear-image").addEventListener("click", clearImage);
  $("clear-filters").addEventListener("click", () => {
    $("after").value = $("before").value = $("folder").value = "";
  });
  for (const kind of ["dragenter", "dragover"]) {
    $("drop").addEventListener(kind, (event) => {
      event.preventDefault();
      $("drop").classList.add("over");
    });
  }
  $("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
  $("drop").addEventListener("drop", (event) => {
    event.preventDefault();
    $("drop").classList.remove("over");
    setImage(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    for (const item of event.clipboardData.items) {
      if (item.kind === "file" && item.type.startsWith("image/")) {
        setImage(item.getAsFile());
        event.preventDefault();
        return;
      }
    }
  });
  $("detail-close").addEventListener("click", () => $("detail").close());
  loadStatus();
  loadFolders();
  setInterval(loadStatus, 15000);
}

document.addEventListener("DOMContentLoaded", wire);
