// The Expert Pipeline dashboard: create experts, watch their progress live, chat when ready.
// Plain ES module, no build step, no third-party code. Everything the API returns is shown
// with textContent (never parsed as HTML).

const API = "/api/experts";
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const POLL_MS = 2000;
const BAR_LINGER_MS = 1200;
const TOAST_MS = 10000;
const MAX_BACKOFF_MS = 30000;

// Words for stages and statuses: the API's one table (GET /api/meta/labels, also used by chat and
// the CLI), loaded at start. Until then, or if it cannot be had, the raw names are shown readably.
const NO_LABELS = { stages: {}, statuses: {}, status_over_stage: ["pending", "cancelled"] };
let labels = NO_LABELS;
const FILE_WORDS = { pending: "Waiting", indexed: "Indexed", failed: "Failed" };

const $ = (selector, root = document) => root.querySelector(selector);

const state = {
  experts: new Map(), // id -> {expert fields, files, progress}
  cards: new Map(), // id -> card element
  stream: null,
  streamBackoff: 1000,
  streamRetry: null,
  pollTimer: null,
  reloadTimer: null,
  selectedFiles: [],
  chatExpertId: null,
  uploading: false,
};

// -- helpers ------------------------------------------------------------------------------

export function stageInWords(progress) {
  if (!progress) return "Not queued";
  if (labels.status_over_stage.includes(progress.status)) return statusInWords(progress.status);
  return labels.stages[progress.stage] ?? readable(progress.stage);
}

export function statusInWords(status) {
  return labels.statuses[status] ?? readable(status);
}

function readable(name) {
  // "text_extraction" -> "Text extraction": only when the label table could not be loaded.
  const words = String(name ?? "").replaceAll("_", " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

export function percentDone(progress) {
  // Rounded down: a run at 99.6 % is not "100 % done".
  return progress ? Math.floor(progress.progress_percentage ?? 0) : 0;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

// -- sign-in: an API token, kept in localStorage ----------------------------------------------
// Without any token in its database the API runs in local mode and needs none. Otherwise every
// request carries `Authorization: Bearer <token>`; EventSource cannot send headers, and a token
// in a URL ends up in logs, so each stream (re)connect trades the token for a single-use ticket.

const TOKEN_KEY = "expert-pipeline.api-token";

function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function setToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage unavailable: the token lasts for this page only
  }
}

function withAuth(headers = {}) {
  const token = getToken();
  return token ? { ...headers, Authorization: `Bearer ${token}` } : headers;
}

async function streamUrl(path) {
  if (!getToken()) return path; // local mode: nothing to trade
  const { ticket } = await api("/api/stream-tickets", { method: "POST" });
  return `${path}?ticket=${encodeURIComponent(ticket)}`;
}

function showSignIn(message) {
  const form = $("#sign-in");
  if (!form) return;
  form.hidden = false;
  const error = $("#sign-in-error");
  error.textContent = message || "Sign in with your API token.";
  error.hidden = false;
  if (state.stream) {
    state.stream.close();
    state.stream = null;
  }
  clearTimeout(state.streamRetry);
  stopPolling();
  setLiveState("polling", "Signed out — sign in to see your experts");
}

function setUpSignIn() {
  const form = $("#sign-in");
  if (!form) return;
  $("#sign-out").hidden = !getToken();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("#api-token");
    const token = input.value.trim();
    if (!token) {
      input.focus();
      return;
    }
    setToken(token);
    input.value = "";
    form.hidden = true;
    $("#sign-in-error").hidden = true;
    $("#sign-out").hidden = false;
    await loadExperts();
    if (form.hidden) connectStream();
  });
  $("#sign-out").addEventListener("click", () => {
    setToken("");
    $("#sign-out").hidden = true;
    state.experts.clear();
    renderList();
    showSignIn("Signed out.");
  });
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: withAuth(options.headers ?? { Accept: "application/json" }) });
  } catch {
    throw new Error("Could not reach the server. Check your connection and try again.");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = new Error(body?.error || `The server answered ${response.status} ${response.statusText}`);
    error.status = response.status;
    if (response.status === 401) showSignIn(error.message);
    throw error;
  }
  return body;
}

function newer(a, b) {
  // Is progress record a newer than b? (no b: yes)
  if (!b) return true;
  return new Date(a.updated_at).getTime() >= new Date(b.updated_at).getTime();
}

// -- toasts --------------------------------------------------------------------------------

function toast(message, kind = "completed") {
  const box = $("#toasts");
  const close = el("button", { type: "button", class: "small", "aria-label": "Dismiss notification", text: "×" });
  const item = el("div", { class: "toast", "data-kind": kind }, el("p", { text: message }), close);
  const remove = () => item.remove();
  close.addEventListener("click", remove);
  box.append(item);
  setTimeout(remove, TOAST_MS);
}

// -- rendering -----------------------------------------------------------------------------

function ensureCard(id) {
  let card = state.cards.get(id);
  if (card) return card;
  card = $("#card-template").content.firstElementChild.cloneNode(true);
  card.dataset.expertId = id;
  const nameId = `expert-name-${id}`;
  const hintId = `chat-hint-${id}`;
  $(".card-name", card).id = nameId;
  $("article", card).setAttribute("aria-labelledby", nameId);
  const button = $(".chat-button", card);
  const hint = $(".chat-hint", card);
  hint.id = hintId;
  button.setAttribute("aria-describedby", hintId);
  button.addEventListener("click", () => openChat(id));
  // Per-card controls (each shown only when the API would accept it).
  $(".cancel-button", card).addEventListener("click", () => cancelExpert(id));
  $(".retry-button", card).addEventListener("click", () => retryExpert(id));
  $(".delete-button", card).addEventListener("click", () => deleteExpert(id));
  $(".details-button", card).addEventListener("click", () => openDetails(id));
  const retryHint = $(".retry-hint", card);
  retryHint.id = `retry-hint-${id}`;
  $(".retry-button", card).setAttribute("aria-describedby", retryHint.id);
  $(".action-error", card).id = `action-error-${id}`;
  const input = $(".add-files-input", card);
  input.id = `add-files-${id}`;
  const zone = $(".card-dropzone", card);
  zone.htmlFor = input.id;
  const uploadBar = $(".card-upload-progress", card);
  uploadBar.id = `add-files-progress-${id}`;
  $(".card-upload-label", card).htmlFor = uploadBar.id;
  input.addEventListener("change", () => {
    const files = [...input.files];
    input.value = "";
    if (files.length) addFilesTo(id, files);
  });
  setUpDropZone(zone, (files) => addFilesTo(id, files));
  setUpRetrieval(id, card);
  state.cards.set(id, card);
  return card;
}

function setUpDropZone(zone, onFiles) {
  const stop = (event) => {
    event.preventDefault();
    event.stopPropagation();
  };
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      stop(event);
      if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", (event) => {
    stop(event);
    zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    stop(event);
    zone.classList.remove("dragging");
    if (event.dataTransfer?.files?.length) onFiles([...event.dataTransfer.files]);
  });
}

export function formatDuration(seconds) {
  // A human duration: "45 s", "2 min 30 s", "12 min", "1 h 20 min".
  const total = Math.max(1, Math.round(seconds));
  if (total < 60) return `${total} s`;
  if (total < 3600) {
    const minutes = Math.floor(total / 60);
    const rest = total % 60;
    return minutes < 10 && rest ? `${minutes} min ${rest} s` : `${Math.round(total / 60)} min`;
  }
  const hours = Math.floor(total / 3600);
  const minutes = Math.round((total % 3600) / 60);
  return minutes ? `${hours} h ${minutes} min` : `${hours} h`;
}

const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

function detailLines(p) {
  // [text, isWarning]
  const lines = [];
  if (p.status === "pending") {
    if (p.queue_position) lines.push([`Position ${p.queue_position} in the queue`, false]);
    if (p.stalled) lines.push([p.stalled_reason || "Nothing has picked this up for a while", true]);
    return lines;
  }
  if (p.total_files > 0) {
    const index = Math.min(p.current_file_index + 1, p.total_files);
    const name = p.current_file || p.details?.filename;
    lines.push([`File ${index} of ${p.total_files}${name ? `: ${name}` : ""}`, false]);
  } else if (p.current_file) {
    lines.push([`File: ${p.current_file}`, false]);
  }
  if (p.total_batches > 0) lines.push([`Batch ${p.current_batch}/${p.total_batches}`, false]);
  if (p.total_chunks > 0) lines.push([`Chunks ${p.current_chunk}/${p.total_chunks}`, false]);
  if (p.failed_files > 0) {
    lines.push([`${p.failed_files} file${p.failed_files === 1 ? "" : "s"} could not be read`, true]);
  }
  if (typeof p.eta_seconds === "number" && Number.isFinite(p.eta_seconds) && p.eta_seconds > 0 && !p.stalled) {
    lines.push([`About ${formatDuration(p.eta_seconds)} left`, false]);
  }
  if (p.stalled) lines.push([p.stalled_reason || "Not moving for a while — it may be stuck", true]);
  return lines;
}

function renderCard(id, { live = false } = {}) {
  const expert = state.experts.get(id);
  if (!expert) return;
  const card = ensureCard(id);
  const p = expert.progress;
  const status = p?.status ?? "pending";
  const terminal = TERMINAL.has(status);
  const pct = percentDone(p);
  const words = stageInWords(p);

  $(".card-name", card).textContent = expert.name;
  const badge = $(".badge", card);
  badge.textContent = statusInWords(status);
  badge.dataset.status = status;
  card.dataset.status = status;

  // Progress bar: shown while processing; when a run ends in view it fills, then disappears.
  const block = $(".progress-block", card);
  const bar = $(".progress-track", card);
  const shownPct = status === "completed" ? 100 : pct;
  bar.setAttribute("aria-valuenow", String(shownPct));
  bar.setAttribute("aria-valuetext", `${shownPct}% — ${words}`);
  bar.setAttribute("aria-label", `Processing progress of ${expert.name}`);
  $(".progress-fill", card).style.width = `${shownPct}%`;
  $(".stage", card).textContent = words;
  $(".pct", card).textContent = `${shownPct}%`;
  const details = $(".details", card);
  details.replaceChildren(
    ...(p && !terminal ? detailLines(p) : []).map(([line, warning]) => el("li", { class: warning ? "warning" : "", text: line })),
  );
  if (!terminal) {
    clearTimeout(card._hideTimer);
    card._hideTimer = null;
    block.hidden = false;
    block.classList.remove("finishing");
  } else if (live && !block.hidden) {
    if (!card._hideTimer) {
      block.classList.add("finishing");
      card._hideTimer = setTimeout(() => {
        block.hidden = true;
        block.classList.remove("finishing");
        card._hideTimer = null;
      }, BAR_LINGER_MS);
    }
  } else if (!card._hideTimer) {
    block.hidden = true;
  }

  // Summary and error.
  const files = expert.files ?? [];
  const indexed = files.filter((f) => f.status === "indexed").length;
  const failed = files.filter((f) => f.status === "failed").length;
  let summary = "";
  if (status === "completed") {
    summary = `Ready to chat · ${indexed} of ${files.length} file${files.length === 1 ? "" : "s"} indexed`;
    if (failed) summary += ` · ${failed} failed`;
  } else if (status === "pending") {
    summary = "Waiting for the pipeline to start…";
  }
  $(".summary", card).textContent = summary;
  const error = $(".error-message", card);
  const showError = (status === "failed" || status === "cancelled") && p?.error_message;
  error.hidden = !showError;
  error.textContent = showError ? `${status === "failed" ? "Processing failed" : "Cancelled"}: ${p.error_message}` : "";

  // Files with their results.
  $(".files-heading", card).textContent = `Files (${files.length})${failed ? ` — ${failed} failed` : ""}`;
  $(".files", card).replaceChildren(
    ...files.map((f) => {
      const [word, note] = fileOutcome(f, status);
      const item = el(
        "li",
        { "data-status": f.status, "data-outcome": word },
        el("span", { class: "file-name", text: f.filename }),
        el("span", { class: "file-status", text: word }),
      );
      if (note) item.append(el("span", { class: f.status === "failed" ? "file-error" : "file-note", text: note }));
      return item;
    }),
  );

  // Controls: each only where the API accepts it (cancel while queued or processing; retry and
  // new files once it stopped; details and delete always).
  const active = status === "pending" || status === "in_progress";
  $(".cancel-button", card).hidden = !active || !p;
  $(".cancel-button", card).setAttribute("aria-label", `Cancel processing of ${expert.name}`);
  const retry = $(".retry-button", card);
  const retryHint = $(".retry-hint", card);
  const canRetry = status === "failed" || status === "cancelled";
  retry.hidden = !canRetry;
  retryHint.hidden = !canRetry;
  retry.setAttribute("aria-label", `Retry ${expert.name}`);
  retryHint.textContent = canRetry ? retryWords(files) : "";
  $(".add-files", card).hidden = active;
  $(".add-files-input", card).setAttribute("aria-label", `Add files to ${expert.name}`);
  $(".details-button", card).setAttribute("aria-label", `Details of ${expert.name}`);
  $(".delete-button", card).setAttribute("aria-label", `Delete ${expert.name}`);

  // Chat: only once the expert is complete; say why and how far along otherwise.
  const button = $(".chat-button", card);
  const hint = $(".chat-hint", card);
  const ready = canChat(expert);
  button.disabled = !ready;
  button.textContent = ready ? `Chat with ${expert.name}` : "Chat";
  let why = "";
  if (ready && (status === "failed" || status === "cancelled")) {
    // Files indexed by an earlier run are still searchable; say what the last run did.
    why = `The last processing ${status === "failed" ? "failed" : "was cancelled"}; chat answers from the files already indexed`;
  } else if (status === "failed") why = "Unavailable: processing failed";
  else if (status === "cancelled") why = "Unavailable: processing was cancelled";
  else if (!ready) why = `Available when processing completes — ${pct}% done`;
  hint.textContent = why;
  if (why && !ready) button.title = why;
  else button.removeAttribute("title");
  $(".retrieval", card).hidden = !ready;
  $(".search-query", card).setAttribute("aria-describedby", $(".search-status", card).id);
  $(".search-results", card).setAttribute("aria-label", `Passages found in ${expert.name}'s documents`);
}

function fileOutcome(file, status) {
  // [word, note]: a file the last run never reached says so, and why, instead of "Waiting".
  if (file.status === "failed") return ["Failed", file.error_message || ""];
  if (file.status === "indexed") {
    const bits = [];
    if (file.pages) bits.push(plural(file.pages, "page", "pages"));
    if (file.chunks) bits.push(plural(file.chunks, "passage", "passages"));
    return ["Indexed", bits.join(", ")];
  }
  if (status === "failed") return ["Not processed", "Processing failed before this file was finished; Retry processes it"];
  if (status === "cancelled") return ["Not processed", "Processing was cancelled before this file was finished; Retry processes it"];
  if (status === "completed") return ["Not processed", "Not part of the last run; Retry processes it"];
  return [FILE_WORDS[file.status] ?? readable(file.status), ""];
}

export function retryWords(files) {
  const indexed = files.filter((f) => f.status === "indexed").length;
  const again = files.length - indexed;
  const parts = [];
  if (indexed) parts.push(`${plural(indexed, "file", "files")} already indexed ${indexed === 1 ? "is" : "are"} kept`);
  if (again) parts.push(`${plural(again, "file", "files")} will be processed again`);
  return parts.length ? `Retry: ${parts.join("; ")}.` : "Retry processes every file again.";
}

function renderList(options = {}) {
  const list = $("#expert-list");
  const ids = [...state.experts.values()]
    .sort((a, b) => new Date(b.created_at) - new Date(a.created_at) || (a.id < b.id ? -1 : 1))
    .map((e) => e.id);
  for (const id of ids) renderCard(id, options);
  const wanted = ids.map((id) => state.cards.get(id));
  // Reorder only when needed, so focus inside a card is not lost on every update.
  const current = [...list.children];
  if (current.length !== wanted.length || current.some((node, i) => node !== wanted[i])) {
    const focused = document.activeElement;
    list.replaceChildren(...wanted);
    if (focused && list.contains(focused)) focused.focus();
  }
  for (const [id, card] of state.cards) {
    if (!state.experts.has(id)) {
      card.remove();
      state.cards.delete(id);
    }
  }
  $("#experts-empty").hidden = ids.length > 0;
}

// -- data ------------------------------------------------------------------------------------

function upsertExpert(expert) {
  const known = state.experts.get(expert.id);
  const progress = known?.progress && !newer(expert.progress ?? {}, known.progress) ? known.progress : expert.progress;
  state.experts.set(expert.id, { ...known, ...expert, progress });
}

async function loadExperts() {
  try {
    const body = await api(API);
    const seen = new Set();
    for (const expert of body.experts) {
      seen.add(expert.id);
      const before = state.experts.get(expert.id)?.progress;
      upsertExpert(expert);
      const after = state.experts.get(expert.id).progress;
      if (before && after && !TERMINAL.has(before.status) && TERMINAL.has(after.status)) announce(expert.id);
    }
    for (const id of [...state.experts.keys()]) if (!seen.has(id)) state.experts.delete(id);
    $("#list-error").hidden = true;
    // "live": a bar that is on screen when its run ends fills up and fades instead of vanishing.
    renderList({ live: true });
  } catch (error) {
    const box = $("#list-error");
    box.textContent = `Could not load your experts: ${error.message}`;
    box.hidden = false;
  }
}

function scheduleReload(delay = 250) {
  clearTimeout(state.reloadTimer);
  state.reloadTimer = setTimeout(loadExperts, delay);
}

function announce(id) {
  const expert = state.experts.get(id);
  const p = expert?.progress;
  if (!p) return;
  if (p.status === "completed") toast(`${expert.name} is ready to chat.`, "completed");
  else if (p.status === "failed") toast(`Processing ${expert.name} failed: ${p.error_message || "unknown error"}`, "failed");
  else if (p.status === "cancelled") toast(`Processing ${expert.name} was cancelled.`, "failed");
}

function onProgress(progress) {
  const expert = state.experts.get(progress.expert_id);
  if (!expert) {
    scheduleReload(); // a new expert (created elsewhere): fetch the list
    return;
  }
  const before = expert.progress;
  if (before && !newer(progress, before)) return;
  expert.progress = progress;
  renderCard(progress.expert_id, { live: true });
  if (TERMINAL.has(progress.status) && (!before || !TERMINAL.has(before.status))) {
    if (before) announce(progress.expert_id);
    scheduleReload(); // per-file results are final now
  }
}

// -- live updates: SSE first, polling while the stream is down -----------------------------

function setLiveState(kind, text) {
  const node = $("#live-state");
  node.dataset.state = kind;
  node.textContent = text;
}

function retryStream() {
  const wait = state.streamBackoff;
  state.streamBackoff = Math.min(state.streamBackoff * 2, MAX_BACKOFF_MS);
  setLiveState("polling", `Live updates interrupted — checking every ${POLL_MS / 1000} s, reconnecting…`);
  startPolling();
  state.streamRetry = setTimeout(connectStream, wait);
}

async function connectStream() {
  clearTimeout(state.streamRetry);
  if (!("EventSource" in window)) {
    startPolling();
    return;
  }
  const attempt = (state.streamAttempt = (state.streamAttempt ?? 0) + 1);
  let url;
  try {
    url = await streamUrl(`${API}/progress/stream`);
  } catch (error) {
    if (attempt !== state.streamAttempt || error.status === 401) return; // superseded, or signed out
    retryStream();
    return;
  }
  if (attempt !== state.streamAttempt) return; // a newer connect started while this one waited
  state.stream?.close();
  const stream = new EventSource(url);
  state.stream = stream;
  stream.addEventListener("open", () => {
    state.streamBackoff = 1000;
    stopPolling();
    setLiveState("live", "Live updates on");
    scheduleReload(0); // catch anything that changed while disconnected
  });
  stream.addEventListener("progress", (event) => {
    try {
      onProgress(JSON.parse(event.data));
    } catch (error) {
      console.warn("bad progress event", error);
    }
  });
  stream.addEventListener("resync", () => scheduleReload(0));
  stream.addEventListener("error", () => {
    // Closed here, never left to EventSource's own retry: a ticket works once.
    stream.close();
    if (state.stream === stream) state.stream = null;
    retryStream();
  });
}

function startPolling() {
  if (state.pollTimer) return;
  const poll = async () => {
    const active = [...state.experts.values()].filter((e) => !TERMINAL.has(e.progress?.status ?? "pending"));
    await Promise.all(
      active.map(async (expert) => {
        try {
          const body = await api(`${API}/${encodeURIComponent(expert.id)}/progress`);
          onProgress(body.progress);
        } catch (error) {
          if (error.status === 404) scheduleReload();
        }
      }),
    );
  };
  poll();
  state.pollTimer = setInterval(poll, POLL_MS);
}

function stopPolling() {
  clearInterval(state.pollTimer);
  state.pollTimer = null;
}

// -- create expert ---------------------------------------------------------------------------

function renderSelectedFiles() {
  const list = $("#selected-files");
  list.replaceChildren(
    ...state.selectedFiles.map((file, index) => {
      const remove = el("button", {
        type: "button", class: "small ghost", text: "Remove", "aria-label": `Remove ${file.name}`,
      });
      remove.addEventListener("click", () => {
        state.selectedFiles.splice(index, 1);
        renderSelectedFiles();
        $("#expert-files").focus();
      });
      return el("li", {}, el("span", { class: "file-name", text: `${file.name} (${formatBytes(file.size)})` }), remove);
    }),
  );
}

function addFiles(files) {
  for (const file of files) {
    const duplicate = state.selectedFiles.some(
      (f) => f.name === file.name && f.size === file.size && f.lastModified === file.lastModified,
    );
    if (!duplicate) state.selectedFiles.push(file);
  }
  renderSelectedFiles();
  showCreateError("");
}

function showCreateError(message) {
  const box = $("#create-error");
  box.textContent = message;
  box.hidden = !message;
}

function upload(form, url = API, bar = $("#upload-progress"), label = $("#upload-label"), done = "Upload complete, creating expert…") {
  // XMLHttpRequest, not fetch: only XHR reports upload progress.
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.responseType = "json";
    xhr.setRequestHeader("Accept", "application/json");
    const token = getToken();
    if (token) xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) {
        const pct = Math.round((event.loaded / event.total) * 100);
        bar.value = pct;
        label.textContent = `Uploading… ${pct}%`;
      }
    });
    xhr.upload.addEventListener("load", () => {
      bar.value = 100;
      label.textContent = done;
    });
    xhr.addEventListener("load", () => {
      const body = xhr.response;
      if (xhr.status >= 200 && xhr.status < 300 && body?.success) resolve(body);
      else if (xhr.status === 0) reject(new Error("The upload failed: could not reach the server."));
      else if (xhr.status === 401) {
        showSignIn(body?.error);
        reject(new Error(body?.error || "Sign in with your API token first."));
      } else {
        const error = new Error(body?.error || `The server answered ${xhr.status}${xhr.statusText ? ` ${xhr.statusText}` : ""}`);
        error.status = xhr.status;
        reject(error);
      }
    });
    xhr.addEventListener("error", () => reject(new Error("The upload failed: could not reach the server.")));
    xhr.addEventListener("abort", () => reject(new Error("The upload was cancelled.")));
    xhr.send(form);
  });
}

async function onCreate(event) {
  event.preventDefault();
  if (state.uploading) return;
  const nameInput = $("#expert-name");
  const name = nameInput.value.trim();
  if (!name) {
    showCreateError("Give the expert a name.");
    nameInput.focus();
    return;
  }
  if (!state.selectedFiles.length) {
    showCreateError("Add at least one document (choose files or drop them on the box).");
    $("#expert-files").focus();
    return;
  }
  showCreateError("");
  const form = new FormData();
  form.append("name", name);
  for (const file of state.selectedFiles) form.append("files", file, file.name);

  const button = $("#create-button");
  const progress = $("#upload");
  state.uploading = true;
  button.disabled = true;
  progress.hidden = false;
  $("#upload-progress").value = 0;
  $("#upload-label").textContent = "Uploading… 0%";
  try {
    const body = await upload(form);
    upsertExpert({ ...body.expert, progress: body.progress });
    renderList();
    nameInput.value = "";
    state.selectedFiles = [];
    renderSelectedFiles();
    toast(`${body.expert.name} was created; processing starts shortly.`, "completed");
  } catch (error) {
    showCreateError(error.message);
  } finally {
    state.uploading = false;
    button.disabled = false;
    progress.hidden = true;
  }
}

function setUpCreateForm() {
  $("#create-form").addEventListener("submit", onCreate);
  const input = $("#expert-files");
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = ""; // so choosing the same file again still fires "change"
  });
  setUpDropZone($("#dropzone"), addFiles);
  // A file dropped next to the box must not make the browser navigate away to the file.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
}

// -- card controls: cancel, retry, add files, delete, details --------------------------------

const expertUrl = (id) => `${API}/${encodeURIComponent(id)}`;

function showActionError(id, message) {
  const box = state.cards.get(id)?.querySelector(".action-error");
  if (!box) return;
  box.textContent = message;
  box.hidden = !message;
}

function actionMessage(error, what) {
  // The API's own words; a 409 says the expert moved on meanwhile, so the card is refreshed.
  if (error.status === 409) {
    scheduleReload(0);
    const now = /is already (\w+)/.exec(error.message)?.[1];
    if (now) return `${what} is not possible now: this expert is already ${statusInWords(now).toLowerCase()}.`;
  }
  if (error.status === 404) return `${what} failed: this expert no longer exists.`;
  return `${what} failed: ${error.message}`;
}

function confirmAction({ title, text, yes }) {
  // A modal dialog; resolves true only when the person confirms. Escape or "Keep it": false.
  const dialog = $("#confirm-dialog");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-yes").textContent = yes;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    const finish = () => {
      dialog.removeEventListener("close", finish);
      resolve(dialog.returnValue === "yes");
      if (opener && document.contains(opener)) opener.focus();
    };
    dialog.returnValue = "";
    dialog.addEventListener("close", finish);
    dialog.showModal();
    $("#confirm-no").focus();
  });
}

function applyProgress(id, progress) {
  // The API's answer to an action, shown at once (the live stream repeats it shortly).
  const expert = state.experts.get(id);
  if (!expert || !progress) return;
  expert.progress = progress;
  renderCard(id, { live: true });
}

async function cancelExpert(id) {
  const expert = state.experts.get(id);
  if (!expert) return;
  const ok = await confirmAction({
    title: `Cancel processing of ${expert.name}?`,
    text: "The run stops at its next batch. Files already indexed stay indexed; you can retry later.",
    yes: "Cancel processing",
  });
  if (!ok) return;
  showActionError(id, "");
  try {
    const body = await api(`${expertUrl(id)}/cancel`, { method: "POST" });
    const already = state.experts.get(id)?.progress?.status === "cancelled";
    applyProgress(id, body.progress);
    if (!already) toast(`Processing ${expert.name} was cancelled.`, "failed");
    scheduleReload();
    focusCardControl(id, ".retry-button");
  } catch (error) {
    showActionError(id, actionMessage(error, "Cancel"));
  }
}

async function retryExpert(id) {
  const expert = state.experts.get(id);
  if (!expert) return;
  showActionError(id, "");
  const button = state.cards.get(id)?.querySelector(".retry-button");
  if (button) button.disabled = true;
  try {
    const body = await api(`${expertUrl(id)}/retry`, { method: "POST" });
    applyProgress(id, body.progress);
    toast(`${expert.name} is queued again. ${retryWords(expert.files ?? [])}`, "completed");
    scheduleReload();
    focusCardControl(id, ".cancel-button");
  } catch (error) {
    showActionError(id, actionMessage(error, "Retry"));
  } finally {
    if (button) button.disabled = false;
  }
}

function focusCardControl(id, selector) {
  // After an action hides the button that had focus, keep the keyboard user on the card.
  const card = state.cards.get(id);
  const target = card?.querySelector(selector);
  if (target && !target.hidden) target.focus();
  else card?.querySelector(".details-button")?.focus();
}

async function addFilesTo(id, files) {
  const expert = state.experts.get(id);
  const card = state.cards.get(id);
  if (!expert || !card || card._uploading) return;
  showActionError(id, "");
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const box = $(".card-upload", card);
  const bar = $(".card-upload-progress", card);
  const label = $(".card-upload-label", card);
  card._uploading = true;
  box.hidden = false;
  bar.value = 0;
  label.textContent = "Uploading… 0%";
  try {
    const body = await upload(form, `${expertUrl(id)}/files`, bar, label, "Upload complete, queuing…");
    upsertExpert({ ...body.expert, progress: body.progress });
    renderList();
    const names = files.map((f) => f.name).join(", ");
    toast(`Added ${names} to ${expert.name}; only the new ${files.length === 1 ? "file is" : "files are"} processed.`, "completed");
  } catch (error) {
    showActionError(id, `Adding files failed: ${error.message}`);
    if (error.status === 409) scheduleReload(0);
  } finally {
    card._uploading = false;
    box.hidden = true;
  }
}

async function deleteExpert(id) {
  const expert = state.experts.get(id);
  if (!expert) return;
  const count = (expert.files ?? []).length;
  const ok = await confirmAction({
    title: `Delete ${expert.name}?`,
    text: `${expert.name} and its ${plural(count, "file", "files")}, index and history are removed for good. This cannot be undone.`,
    yes: `Delete ${expert.name}`,
  });
  if (!ok) return;
  showActionError(id, "");
  try {
    await api(expertUrl(id), { method: "DELETE" });
  } catch (error) {
    if (error.status !== 404) {
      showActionError(id, actionMessage(error, "Delete"));
      return;
    }
  }
  state.experts.delete(id);
  renderList();
  toast(`${expert.name} was deleted.`, "completed");
  $("#experts-heading").focus();
}

function whenText(date) {
  const sameDay = date.toDateString() === new Date().toDateString();
  const time = date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return sameDay ? time : `${date.toLocaleDateString()} ${time}`;
}

export function stageSpans(events, now = Date.now()) {
  // [[words, seconds|null]]: consecutive events in one stage form a span, until the next starts.
  const spans = [];
  for (const event of events) {
    const words = stageInWords(event);
    const at = new Date(event.created_at).getTime();
    const last = spans.at(-1);
    if (!last || last.words !== words) spans.push({ words, start: at, end: at, final: TERMINAL.has(event.status) });
    else last.end = at;
  }
  return spans.map((span, i) => {
    if (span.final) return [span.words, null];
    const end = i + 1 < spans.length ? spans[i + 1].start : now;
    return [span.words, Math.max(0, (end - span.start) / 1000)];
  });
}

async function openDetails(id) {
  const expert = state.experts.get(id);
  if (!expert) return;
  const dialog = $("#details-dialog");
  $("#details-title").textContent = `Details of ${expert.name}`;
  for (const section of ["#stages-section", "#files-section", "#timeline-section", "#details-error"]) $(section).hidden = true;
  $("#details-loading").hidden = false;
  dialog._opener = state.cards.get(id)?.querySelector(".details-button");
  dialog.dataset.expertId = id;
  dialog.showModal();
  $("#details-close").focus();
  try {
    const [history, fresh] = await Promise.all([
      api(`${expertUrl(id)}/progress/events`).catch((error) => {
        if (error.status === 404) return { events: [] }; // no progress record (cleaned up): no history
        throw error;
      }),
      api(expertUrl(id)),
    ]);
    if (dialog.dataset.expertId !== id) return;
    upsertExpert(fresh.expert);
    renderCard(id);
    renderDetails(state.experts.get(id), history.events);
  } catch (error) {
    const box = $("#details-error");
    box.textContent = `Could not load the history: ${error.message}`;
    box.hidden = false;
  } finally {
    $("#details-loading").hidden = true;
  }
}

function renderDetails(expert, events) {
  const status = expert.progress?.status ?? "pending";
  const spans = stageSpans(events);
  $("#stage-times").replaceChildren(
    ...spans.map(([words, seconds]) =>
      el("li", {}, el("span", { class: "stage-name", text: words }),
        el("span", { class: "stage-time", text: seconds == null ? "" : seconds < 1 ? "under 1 s" : formatDuration(seconds) }))),
  );
  $("#stages-section").hidden = spans.length === 0;
  $("#file-outcomes").replaceChildren(
    ...(expert.files ?? []).map((f) => {
      const [word, note] = fileOutcome(f, status);
      return el("li", { "data-status": f.status },
        el("span", { class: "file-name", text: f.filename }),
        el("span", { class: "file-status", text: word }),
        ...(note ? [el("span", { class: f.status === "failed" ? "file-error" : "file-note", text: note })] : []));
    }),
  );
  $("#files-section").hidden = !(expert.files ?? []).length;
  let previous = null;
  $("#timeline").replaceChildren(
    ...events.map((event) => {
      const at = new Date(event.created_at);
      const gap = previous ? (at - previous) / 1000 : null;
      previous = at;
      const kind = event.data?.kind === "interrupted" || event.data?.retry_of ? "warning"
        : event.status === "failed" ? "failed" : event.status === "cancelled" ? "cancelled" : "";
      return el("li", { class: "event", "data-kind": kind },
        el("time", { datetime: event.created_at, text: whenText(at) }),
        el("span", { class: "event-gap", text: gap != null && gap >= 1 ? `+${formatDuration(gap)}` : "" }),
        el("span", { class: "event-stage", text: stageInWords(event) }),
        el("span", { class: "event-message", text: event.message }));
    }),
  );
  $("#timeline-section").hidden = false;
  if (!events.length) $("#timeline").replaceChildren(el("li", { class: "hint", text: "No history recorded yet." }));
}

function setUpDialogs() {
  const confirm = $("#confirm-dialog");
  $("#confirm-yes").addEventListener("click", () => confirm.close("yes"));
  $("#confirm-no").addEventListener("click", () => confirm.close("no"));
  const details = $("#details-dialog");
  $("#details-close").addEventListener("click", () => details.close());
  details.addEventListener("close", () => {
    details.dataset.expertId = "";
    if (details._opener && document.contains(details._opener)) details._opener.focus();
  });
}

// -- test retrieval ----------------------------------------------------------------------------
// What the chat would read for a question: the search API's ranked passages, on a ready card.

function setUpRetrieval(id, card) {
  const input = $(".search-query", card);
  input.id = `search-query-${id}`;
  $(".search-label", card).htmlFor = input.id;
  $(".search-status", card).id = `search-status-${id}`;
  $(".search-form", card).addEventListener("submit", (event) => {
    event.preventDefault();
    searchPassages(id, card);
  });
}

function passageSnippet(text, query, limit = 300) {
  // The part of the passage around the first word of the query it holds (else its start).
  const lower = text.toLowerCase();
  const hits = query.toLowerCase().split(/\s+/).filter((w) => w.length > 1).map((w) => lower.indexOf(w));
  const at = Math.min(...hits.filter((i) => i >= 0), text.length);
  const start = at < text.length && at > 80 ? at - 80 : 0;
  const end = Math.min(text.length, start + limit);
  return `${start > 0 ? "…" : ""}${text.slice(start, end).trim()}${end < text.length ? "…" : ""}`;
}

async function searchPassages(id, card) {
  const input = $(".search-query", card);
  const status = $(".search-status", card);
  const list = $(".search-results", card);
  const query = input.value.trim();
  if (!query) {
    status.textContent = "Type what to look for first.";
    input.focus();
    return;
  }
  const button = $(".search-button", card);
  button.disabled = true;
  status.textContent = "Searching…";
  try {
    const body = await api(`${API}/${encodeURIComponent(id)}/search`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ query, top_k: 5 }),
    });
    list.replaceChildren(
      ...body.results.map((result) => {
        const where = citedWhere(result);
        const text = squash(result.text);
        return el(
          "li",
          { class: "search-result" },
          el(
            "p",
            { class: "search-where" },
            el("span", { class: "source-where", text: where }),
            el("span", { class: "search-score", text: `score ${result.score.toFixed(2)}` }),
          ),
          el("p", { class: "source-snippet", text: passageSnippet(text, query) }),
        );
      }),
    );
    const n = body.results.length;
    status.textContent = n ? `${plural(n, "passage", "passages")}, best first` : "No passage matches.";
  } catch (err) {
    list.replaceChildren();
    status.textContent = err.message;
    if (err.status === 409) scheduleReload(0);
  } finally {
    button.disabled = false;
  }
}

// -- chat ------------------------------------------------------------------------------------

// The API's rule (expert.ready): indexed files and no run under way; a progress record that
// the cleanup removed does not make a ready expert unready.
function canChat(expert) {
  const status = expert.progress?.status;
  if (status === "pending" || status === "in_progress") return false;
  return status === "completed" || expert.ready === true;
}

function openChat(id) {
  const expert = state.experts.get(id);
  if (!expert || !canChat(expert)) return;
  const dialog = $("#chat-dialog");
  if (state.chatExpertId !== id) $("#transcript").replaceChildren();
  state.chatExpertId = id;
  $("#chat-title").textContent = `Chat with ${expert.name}`;
  $("#chat-error").hidden = true;
  dialog._opener = state.cards.get(id)?.querySelector(".chat-button");
  dialog.showModal();
  $("#chat-message").focus();
}

const squash = (text) => text.replace(/\s+/g, " ").trim();

// "file.pdf, page 4", or "file.pdf, pages 4–5" for a passage that runs onto the next page.
function citedWhere(passage) {
  if (passage.page == null) return passage.filename;
  if (passage.page_end != null && passage.page_end > passage.page) {
    return `${passage.filename}, pages ${passage.page}\u2013${passage.page_end}`;
  }
  return `${passage.filename}, page ${passage.page}`;
}

function snippetFor(source, number, answer) {
  // The part of the passage around the sentence the answer quotes from it (marker [number]).
  const text = squash(source.text);
  const cited = [...answer.matchAll(/(.+?)\s\[(\d+)\](?:\s|$)/g)]
    .filter((m) => Number(m[2]) === number)
    .map((m) => squash(m[1]));
  const LIMIT = 260;
  for (const sentence of cited) {
    const at = text.indexOf(sentence);
    if (at >= 0) {
      const start = Math.max(0, at - 60);
      const end = Math.min(text.length, Math.max(at + sentence.length, start + LIMIT));
      return `${start > 0 ? "…" : ""}${text.slice(start, end)}${end < text.length ? "…" : ""}`;
    }
  }
  return text.length > LIMIT ? `${text.slice(0, LIMIT).trimEnd()}…` : text;
}

function renderAnswer(item, body) {
  item.classList.remove("pending");
  item.replaceChildren(el("p", { class: "answer-text", text: body.answer }));
  if (body.sources.length) {
    item.append(
      el("h3", { class: "visually-hidden", text: "Sources" }),
      el(
        "ol",
        { class: "sources", "aria-label": "Sources" },
        ...body.sources.map((source, index) => {
          const where = citedWhere(source);
          return el(
            "li",
            { class: "source" },
            el("span", { class: "source-where", text: where }),
            el("span", { class: "source-snippet", text: snippetFor(source, index + 1, body.answer) }),
          );
        }),
      ),
    );
  }
}

async function onAsk(event) {
  event.preventDefault();
  const id = state.chatExpertId;
  const box = $("#chat-message");
  const message = box.value.trim();
  const error = $("#chat-error");
  if (!message) {
    error.textContent = "Type a question first.";
    error.hidden = false;
    box.focus();
    return;
  }
  error.hidden = true;
  const transcript = $("#transcript");
  transcript.append(el("li", { class: "msg msg-question" }, el("p", { text: message })));
  const answer = el("li", { class: "msg msg-answer pending" }, el("p", { text: "Looking through the documents…" }));
  transcript.append(answer);
  answer.scrollIntoView({ block: "nearest" });
  const send = $("#chat-send");
  send.disabled = true;
  box.value = "";
  try {
    const body = await api(`${API}/${encodeURIComponent(id)}/chat`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ message }),
    });
    renderAnswer(answer, body);
  } catch (err) {
    answer.classList.remove("pending");
    answer.classList.add("error");
    answer.replaceChildren(el("p", { text: err.message }));
    if (err.status === 409) scheduleReload(0);
  } finally {
    send.disabled = false;
    answer.scrollIntoView({ block: "nearest" });
    box.focus();
  }
}

function setUpChat() {
  const dialog = $("#chat-dialog");
  $("#chat-form").addEventListener("submit", onAsk);
  $("#chat-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => dialog._opener?.focus());
  $("#chat-message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("#chat-form").requestSubmit();
    }
  });
}

// -- start -----------------------------------------------------------------------------------

async function loadLabels() {
  try {
    // Public and token-free: asked for before sign-in, so it never triggers the sign-in form.
    const response = await fetch("/api/meta/labels", { headers: { Accept: "application/json" } });
    if (response.ok) labels = await response.json();
  } catch {
    // Unreachable for now: the readable raw names stand in; the rest of the page still works.
  }
}

async function start() {
  const labelsLoaded = loadLabels();
  setUpSignIn();
  setUpCreateForm();
  setUpChat();
  setUpDialogs();
  await labelsLoaded; // before the first card is drawn, so no card shows the stand-in words
  await loadExperts();
  if ($("#sign-in")?.hidden !== false) connectStream();
}

start();
