"use strict";

// cliptag console, browser side: polls the JSON API, follows detections over
// Server-Sent Events and edits the label set of the selected stream.
(() => {
  const STREAMS_POLL_MS = 1000; // the stats want 1 s; the selector rides along
  const LABELS_POLL_MS = 5000;
  const RENDER_GAP_MS = 100; // live panels repaint at most ~10 times a second
  const SNAPSHOT_GAP_MS = 250;
  const SNAPSHOT_HIDDEN_GAP_MS = 1000; // a hidden tab needs no fresh picture
  const SSE_RETRY_MS = 3000;
  const INFO_RETRY_MS = 5000;
  const SUCCESS_SHOWN_MS = 4000;
  const MAX_EVENTS = 50;
  const TOKEN_KEY = "cliptag.token";

  const $ = (id) => document.getElementById(id);

  const state = {
    tokenRequired: false,
    streams: [],
    streamsFailing: false, // report an outage once, not every second
    selected: null, // id of the selected stream, null when none runs
    set: null, // {stream, version, name, spec} as last shown; spec is the LABELSET
    setKey: "", // serialised reply behind `set`, to skip needless redraws
    labelsSeq: 0, // replies to older label requests are dropped
    labelsInFlight: 0,
    labelsLoadedAt: 0,
    busy: false, // an edit is in flight
    filled: null, // editor values the console last wrote itself
    source: null, // the EventSource of the selected stream
    sseRetry: 0,
    latest: null, // newest detection, drawn on the next repaint
    pendingEvents: [], // start/end/lagged entries waiting for the next repaint
    renderQueued: false,
    lastRender: 0,
    messageTimer: 0,
  };

  // ---------------------------------------------------------------- helpers

  /** An element with an optional class and text (never HTML). */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function formatMs(us) {
    const ms = Number(us) / 1000;
    return Number.isFinite(ms) ? `${ms.toFixed(ms < 10 ? 2 : 1)} ms` : "–";
  }

  function scoreOf(value) {
    const n = Number(value);
    return Number.isFinite(n) ? n : 0;
  }

  function clamp01(x) {
    return Math.min(1, Math.max(0, x));
  }

  /** Trimmed, non-empty pieces of `text` split by `separator`. */
  function splitList(text, separator) {
    return text.split(separator).map((s) => s.trim()).filter((s) => s !== "");
  }

  // -------------------------------------------------------------------- API

  /** A failed call: `code` is the server's code, or one made up here. */
  class ApiError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
    toString() {
      return `${this.code}: ${this.message}`;
    }
  }

  function token() {
    return state.tokenRequired ? $("token").value.trim() : "";
  }

  /** Calls the API and returns the parsed reply; throws ApiError otherwise. */
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const bearer = token();
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    let response;
    let text;
    try {
      response = await fetch(path, {
        method,
        headers,
        cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      text = await response.text();
    } catch (err) {
      throw new ApiError("NETWORK", `cannot reach the server (${err.message})`);
    }
    let data;
    try {
      data = JSON.parse(text);
    } catch {
      data = undefined;
    }
    if (!response.ok) {
      if (data && typeof data.code === "string") {
        throw new ApiError(data.code, String(data.message ?? ""));
      }
      throw new ApiError(`HTTP ${response.status}`, text.slice(0, 200) || response.statusText);
    }
    if (data === null || typeof data !== "object") {
      throw new ApiError("BAD_REPLY", `${method} ${path} did not answer with JSON`);
    }
    return data;
  }

  // --------------------------------------------------------------- messages

  /** Errors stay until the next message; successes fade after a while. */
  function showMessage(text, isError) {
    const box = $("message");
    box.textContent = text;
    box.classList.toggle("error", isError);
    box.classList.toggle("ok", !isError);
    box.hidden = false;
    clearTimeout(state.messageTimer);
    if (!isError) state.messageTimer = setTimeout(() => { box.hidden = true; }, SUCCESS_SHOWN_MS);
  }

  function showError(err) {
    showMessage(String(err), true);
    // The server asks for a token we did not know about: offer the field.
    if (err.code === "UNAUTHENTICATED") revealToken(true);
  }

  // ------------------------------------------------------------ info, token

  function revealToken(required) {
    state.tokenRequired = required;
    $("token-field").hidden = !required;
  }

  function setupToken() {
    const input = $("token");
    try {
      input.value = sessionStorage.getItem(TOKEN_KEY) ?? "";
    } catch {
      // storage may be off (private mode); the field still works for this page
    }
    input.addEventListener("input", () => {
      try {
        sessionStorage.setItem(TOKEN_KEY, input.value);
      } catch {
        // see above
      }
    });
  }

  async function loadInfo() {
    try {
      const info = await api("GET", "/api/info");
      revealToken(Boolean(info.token_required));
      $("server-version").textContent = info.version ? `v${info.version}` : "";
    } catch (err) {
      showError(err);
      setTimeout(loadInfo, INFO_RETRY_MS);
    }
  }

  // ---------------------------------------------------------------- streams

  async function pollStreams() {
    try {
      const data = await api("GET", "/api/streams");
      state.streams = Array.isArray(data.streams) ? data.streams : [];
      state.streamsFailing = false;
      updateSelector();
      renderStats();
    } catch (err) {
      if (!state.streamsFailing) showError(err);
      state.streamsFailing = true;
    } finally {
      setTimeout(pollStreams, STREAMS_POLL_MS);
    }
  }

  function updateSelector() {
    const select = $("stream-select");
    const ids = state.streams.map((s) => String(s.id));
    const key = JSON.stringify(ids);
    // Rebuild only on change, so an open drop-down is left alone.
    if (select.dataset.ids !== key) {
      select.replaceChildren(...ids.map((id) => {
        const option = el("option", "", id);
        option.value = id;
        return option;
      }));
      select.dataset.ids = key;
    }
    const none = ids.length === 0;
    select.disabled = none;
    $("no-stream").hidden = !none;
    $("panels").hidden = none;
    if (!ids.includes(state.selected)) selectStream(none ? null : ids[0]);
    else select.value = state.selected;
  }

  function selectStream(id) {
    if (id === state.selected) return;
    state.selected = id;
    if (id !== null) $("stream-select").value = id;
    $("snapshot").alt = id === null
      ? "No stream selected"
      : `Latest frame of stream ${id} with its labels drawn on it`;
    resetStreamView();
    openDetections();
    loadLabels();
    renderStats();
  }

  /** Forgets everything shown about the previous stream. */
  function resetStreamView() {
    state.set = null;
    state.setKey = "";
    state.latest = null;
    state.pendingEvents = [];
    for (const id of ["now", "events", "label-list"]) $(id).replaceChildren();
    for (const id of ["now-frame", "now-version", "now-latency", "labels-version", "labels-meta"]) {
      $(id).textContent = "";
    }
    $("now-stale").hidden = true;
    // The editor belonged to the old stream: empty it so the new set fills it.
    setEditorValues({ text: "", template: "{}", scoring: "softmax", threshold: "", topK: "0" });
    state.filled = editorValues();
  }

  function renderStats() {
    const stream = state.streams.find((s) => String(s.id) === state.selected);
    const stats = stream?.stats ?? {};
    for (const node of document.querySelectorAll("#stats [data-stat]")) {
      const key = node.dataset.stat;
      const value = stats[key];
      if (value === undefined || value === null) node.textContent = "–";
      else node.textContent = key.endsWith("_us") ? formatMs(value) : String(value);
    }
    $("stream-model").textContent = stream
      ? `model ${stream.model ?? "?"} · label set ${stream.label_set ?? "?"} v${stream.label_set_version ?? "?"}`
      : "";
    // A supervised stream's state: its restarts, and while it is down, why and when
    // it comes back.
    const health = stream?.health;
    let healthText = "";
    if (health) {
      healthText = `${health.state} · ${health.restarts} restart${health.restarts === 1 ? "" : "s"}`;
      if (health.retry_unix_ms) {
        const wait = Math.max(0, (health.retry_unix_ms - Date.now()) / 1000);
        healthText += ` · again in ${wait.toFixed(1)} s`;
      }
    }
    $("stream-health").textContent = healthText;
    $("stream-health").hidden = !healthText;
    $("stream-health").dataset.state = health ? String(health.state) : "";
    // Where its detections go (NATS, MQTT) and the labels key it follows.
    const parts = (stream?.brokers ?? []).map((b) => {
      const up = b.connected ? "up" : `down${b.last_error ? ` (${b.last_error})` : ""}`;
      return `${b.broker} ${up} · ${b.published} sent · ${b.dropped} dropped`;
    });
    const binding = stream?.labels_binding;
    if (binding) {
      const refused = binding.refused ? ` · ${binding.refused} refused: ${binding.last_refusal}` : "";
      parts.push(`labels from key ${binding.key} (revision ${binding.revision})${refused}`);
    }
    $("stream-brokers").textContent = parts.join(" | ");
    $("stream-brokers").hidden = parts.length === 0;
    $("stream-brokers").dataset.down = (stream?.brokers ?? []).some((b) => !b.connected) ? "1" : "";
    const down = health && health.state !== "running" && health.state !== "starting";
    const lastError = stats.last_error
      ? String(stats.last_error)
      : down && health.last_error
        ? String(health.last_error)
        : "";
    $("last-error").textContent = lastError ? `last error: ${lastError}` : "";
    $("last-error").hidden = !lastError;
  }

  // ------------------------------------------------------------- detections

  function setConnection(kind, text) {
    const badge = $("conn");
    badge.dataset.state = kind;
    badge.textContent = text;
  }

  function closeDetections() {
    clearTimeout(state.sseRetry);
    if (state.source) state.source.close();
    state.source = null;
  }

  function openDetections() {
    closeDetections();
    if (state.selected === null) {
      setConnection("idle", "no stream");
      return;
    }
    const source = new EventSource(`/api/detections?stream=${encodeURIComponent(state.selected)}`);
    state.source = source;
    setConnection("connecting", "connecting…");
    source.onopen = () => setConnection("live", "live");
    source.onerror = () => {
      if (state.source !== source) return;
      if (source.readyState === EventSource.CLOSED) {
        // The browser gives up for good on an error status; retry ourselves.
        setConnection("closed", "disconnected, retrying…");
        state.sseRetry = setTimeout(() => {
          if (state.source === source) openDetections();
        }, SSE_RETRY_MS);
      } else {
        setConnection("reconnecting", "reconnecting…");
      }
    };
    source.addEventListener("detection", (e) => onDetection(source, e));
    source.addEventListener("lagged", (e) => onLagged(source, e));
  }

  function parseEventData(e) {
    try {
      return JSON.parse(e.data);
    } catch {
      return null;
    }
  }

  function onDetection(source, e) {
    const d = parseEventData(e);
    if (source !== state.source || !d || (d.stream !== undefined && d.stream !== state.selected)) return;
    state.latest = d;
    for (const event of Array.isArray(d.events) ? d.events : []) {
      state.pendingEvents.push({ ...event, frame: d.frame, at: new Date() });
    }
    trimPendingEvents();
    noticeVersion(d.label_set_version);
    queueRender();
  }

  function onLagged(source, e) {
    const data = parseEventData(e);
    if (source !== state.source || !data) return;
    state.pendingEvents.push({ kind: "lagged", missed: data.missed, at: new Date() });
    trimPendingEvents();
    queueRender();
  }

  function trimPendingEvents() {
    const extra = state.pendingEvents.length - MAX_EVENTS;
    if (extra > 0) state.pendingEvents.splice(0, extra);
  }

  /** A detection from another version means someone changed the set. */
  function noticeVersion(version) {
    if (!state.set || typeof version !== "number" || version === state.set.version) return;
    if (state.labelsInFlight > 0) return;
    // Detections of the old version still trickle in after an edit; a newer
    // version reloads at once, an older one at most once a second.
    if (version > state.set.version || Date.now() - state.labelsLoadedAt > 1000) loadLabels();
  }

  function queueRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    const wait = Math.max(0, state.lastRender + RENDER_GAP_MS - performance.now());
    setTimeout(() => requestAnimationFrame(renderLive), wait);
  }

  function renderLive() {
    state.renderQueued = false;
    state.lastRender = performance.now();
    renderNow();
    renderEvents();
  }

  function renderNow() {
    const d = state.latest;
    if (!d) return;
    $("now-frame").textContent = String(d.frame ?? "");
    $("now-version").textContent = String(d.label_set_version ?? "");
    $("now-stale").hidden = !d.stale;
    $("now-latency").textContent = d.latency_us === undefined ? "" : `· ${formatMs(d.latency_us)}`;
    const labels = Array.isArray(d.labels) ? d.labels : [];
    $("now").replaceChildren(...labels.map(scoreBar));
  }

  function scoreBar(entry) {
    const name = String(entry.label);
    const score = scoreOf(entry.score);
    const row = el("div", "bar-row");
    row.dataset.label = name;
    row.dataset.score = score.toFixed(3);
    const track = el("span", "bar-track");
    const fill = el("span", "bar-fill");
    fill.style.width = `${(clamp01(score) * 100).toFixed(1)}%`;
    track.append(fill);
    row.append(el("span", "bar-name", name), track, el("span", "bar-value", score.toFixed(3)));
    return row;
  }

  function renderEvents() {
    const list = $("events");
    for (const event of state.pendingEvents) list.prepend(eventItem(event));
    state.pendingEvents = [];
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  }

  function eventItem(event) {
    const item = el("li", `event ${event.kind}`);
    item.dataset.kind = String(event.kind);
    item.append(el("time", "muted", event.at.toLocaleTimeString()));
    if (event.kind === "lagged") {
      item.append(el("span", "", ` missed ${event.missed} detections (the console fell behind)`));
      return item;
    }
    item.dataset.label = String(event.label);
    item.append(
      el("span", `badge ${event.kind}`, String(event.kind)),
      el("span", "event-label", String(event.label)),
      el("span", "muted", `${scoreOf(event.score).toFixed(3)} · frame ${event.frame}`),
    );
    return item;
  }

  // -------------------------------------------------------------- label set

  async function loadLabels() {
    const stream = state.selected;
    if (stream === null) return;
    const seq = ++state.labelsSeq;
    state.labelsInFlight += 1;
    try {
      const data = await api("GET", `/api/labels?stream=${encodeURIComponent(stream)}`);
      if (seq === state.labelsSeq && stream === state.selected) applySets(data, stream);
    } catch (err) {
      if (seq === state.labelsSeq && stream === state.selected) showError(err);
    } finally {
      state.labelsInFlight -= 1;
      state.labelsLoadedAt = Date.now();
    }
  }

  /** Shows the set of `stream` from a `{"sets": [...]}` reply. */
  function applySets(data, stream) {
    const sets = Array.isArray(data.sets) ? data.sets : [];
    const entry = sets.find((s) => s.stream === stream) ?? sets[0];
    if (!entry || !entry.labels || !Array.isArray(entry.labels.labels)) {
      showMessage(`the server sent no label set for stream ${stream}`, true);
      return;
    }
    const key = JSON.stringify(entry);
    if (key === state.setKey) return;
    state.setKey = key;
    state.set = { stream, version: entry.version, name: entry.label_set, spec: entry.labels };
    renderSet();
    fillEditor(false);
  }

  function renderSet() {
    const { version, name, spec } = state.set;
    $("labels-version").textContent = String(version);
    const threshold = spec.threshold ?? "default";
    const center = spec.scoring === "sigmoid" && spec.sigmoid_center != null
      ? ` (center ${spec.sigmoid_center})` : "";
    $("labels-meta").textContent = `set ${name} · template "${spec.template}" · ${spec.scoring}${center}`
      + ` · threshold ${threshold} · top k ${spec.top_k} · pooling ${spec.pool_frames ?? 0} frames`;
    $("label-list").replaceChildren(...spec.labels.map((label) => labelRow(label, spec.template)));
  }

  function labelRow(label, template) {
    const name = String(label.name);
    const prompts = Array.isArray(label.prompts) ? label.prompts : [];
    const row = el("tr");
    row.dataset.label = name;
    const promptCell = el("td", "prompts");
    if (prompts.length === 0) {
      // Say what the model will actually see for a bare name.
      promptCell.append(el("span", "muted", String(template ?? "{}").replace("{}", name)));
    } else {
      promptCell.append(el("span", "", prompts.join(" | ")));
    }
    const remove = el("button", "remove", "remove");
    remove.type = "button";
    remove.disabled = state.busy;
    remove.setAttribute("aria-label", `remove ${name}`);
    remove.addEventListener("click", () => removeLabel(name));
    const actions = el("td", "actions");
    actions.append(remove);
    row.append(el("td", "label-name", name), promptCell, actions);
    return row;
  }

  function setBusy(busy) {
    state.busy = busy;
    for (const button of document.querySelectorAll("#add-button, #replace-button, #label-list .remove")) {
      button.disabled = busy;
    }
  }

  /**
   * Sends one edit with the shown version as `if_version`. On failure the
   * server's word is shown and the set reloaded; the forms keep their input.
   */
  async function sendEdit(method, path, body) {
    if (state.busy) return false;
    if (!state.set || state.set.stream !== body.stream) {
      showMessage("the label set has not loaded yet", true);
      return false;
    }
    body.if_version = state.set.version;
    setBusy(true);
    try {
      const data = await api(method, path, body);
      if (body.stream !== state.selected) return false;
      state.labelsSeq += 1; // label requests sent before this reply are older
      applySets(data, body.stream);
      showMessage(`label set updated to version ${state.set.version}`, false);
      return true;
    } catch (err) {
      showError(err);
      loadLabels();
      return false;
    } finally {
      setBusy(false);
    }
  }

  function removeLabel(name) {
    sendEdit("POST", "/api/labels/update", { stream: state.selected, add: [], remove: [name] });
  }

  async function onAdd(e) {
    e.preventDefault();
    const name = $("add-name").value.trim();
    if (!name) {
      showMessage("a label needs a name", true);
      return;
    }
    const prompts = splitList($("add-prompts").value, /\r?\n/);
    const ok = await sendEdit("POST", "/api/labels/update", {
      stream: state.selected,
      add: [{ name, prompts }],
      remove: [],
    });
    if (ok) {
      $("add-name").value = "";
      $("add-prompts").value = "";
    }
  }

  async function onReplace(e) {
    e.preventDefault();
    let spec;
    try {
      spec = specFromEditor();
    } catch (err) {
      showMessage(err.message, true);
      return;
    }
    const ok = await sendEdit("PUT", "/api/labels", { stream: state.selected, labels: spec });
    if (ok) fillEditor(true); // show the set as the server now holds it
  }

  // ----------------------------------------------------------------- editor

  function editorValues() {
    return {
      text: $("replace-text").value,
      template: $("template").value,
      scoring: $("scoring").value,
      threshold: $("threshold").value,
      topK: $("top-k").value,
    };
  }

  function setEditorValues(values) {
    $("replace-text").value = values.text;
    $("template").value = values.template;
    $("scoring").value = values.scoring;
    $("threshold").value = values.threshold;
    $("top-k").value = values.topK;
  }

  function sameValues(a, b) {
    return a !== null && b !== null && JSON.stringify(a) === JSON.stringify(b);
  }

  /** The editor's text for a set: `name` or `name: prompt | prompt` per line. */
  function valuesFromSpec(spec) {
    const lines = spec.labels.map((label) => {
      const prompts = Array.isArray(label.prompts) ? label.prompts : [];
      const name = escapeText(String(label.name), ":|");
      return prompts.length
        ? `${name}: ${prompts.map((p) => escapeText(String(p), "|")).join(" | ")}`
        : name;
    });
    return {
      text: lines.join("\n"),
      template: String(spec.template ?? "{}"),
      scoring: spec.scoring === "sigmoid" ? "sigmoid" : "softmax",
      threshold: spec.threshold == null ? "" : String(spec.threshold),
      topK: String(spec.top_k ?? 0),
    };
  }

  /**
   * Writes the shown set into the editor. Unless forced, only while the user
   * is not in the editor and has not changed what was filled in last.
   */
  function fillEditor(force) {
    if (!state.set) return;
    const editing = $("replace-form").contains(document.activeElement);
    const untouched = sameValues(editorValues(), state.filled);
    if (!force && (editing || !untouched)) return;
    setEditorValues(valuesFromSpec(state.set.spec));
    state.filled = editorValues(); // read back: number inputs normalise values
  }

  /**
   * Backslash before each of `chars` and before backslashes, so that a label
   * named "a: b" or a prompt with "|" survives the editor's round trip.
   */
  function escapeText(text, chars) {
    let out = "";
    for (const c of text) out += c === "\\" || chars.includes(c) ? `\\${c}` : c;
    return out;
  }

  /** The index of the first `c` in `text` not escaped by a backslash, or -1. */
  function firstUnescaped(text, c) {
    for (let i = 0; i < text.length; i++) {
      if (text[i] === "\\") i++;
      else if (text[i] === c) return i;
    }
    return -1;
  }

  /** `text` split at unescaped `separator`s, each piece unescaped. */
  function splitUnescaped(text, separator) {
    const pieces = [""];
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (c === "\\" && i + 1 < text.length) {
        pieces[pieces.length - 1] += text[++i];
      } else if (c === separator) {
        pieces.push("");
      } else {
        pieces[pieces.length - 1] += c;
      }
    }
    return pieces;
  }

  function parseLabelLines(text) {
    const labels = [];
    text.split(/\r?\n/).forEach((raw, index) => {
      const line = raw.trim();
      if (line === "") return;
      // The name ends at the first ":" not written as "\:"; prompts split at "|".
      const colon = firstUnescaped(line, ":");
      const name = splitUnescaped(colon < 0 ? line : line.slice(0, colon), "").join("").trim();
      if (name === "") throw new Error(`line ${index + 1}: a label needs a name before the ":"`);
      const prompts =
        colon < 0
          ? []
          : splitUnescaped(line.slice(colon + 1), "|")
              .map((p) => p.trim())
              .filter((p) => p !== "");
      labels.push({ name, prompts });
    });
    return labels;
  }

  /** The LABELSET for a replace; fields without an input keep their value. */
  function specFromEditor() {
    const values = editorValues();
    const current = state.set ? state.set.spec : {};
    let threshold = null;
    if (values.threshold.trim() !== "") {
      threshold = Number(values.threshold);
      if (!Number.isFinite(threshold)) throw new Error("the threshold must be a number or empty");
    }
    const topK = values.topK.trim() === "" ? 0 : Number(values.topK);
    if (!Number.isInteger(topK) || topK < 0) throw new Error("top k must be a whole number, 0 for the default");
    return {
      labels: parseLabelLines(values.text),
      template: values.template,
      scoring: values.scoring,
      sigmoid_center: current.sigmoid_center ?? null,
      threshold,
      top_k: topK,
      pool_frames: current.pool_frames ?? 0,
    };
  }

  // --------------------------------------------------------------- snapshot

  /**
   * One request at a time: the next picture is asked for only after the
   * previous one loaded or failed (404 until the stream's first frame).
   */
  function startSnapshots() {
    const img = $("snapshot");
    const note = $("snapshot-note");
    let counter = 0;
    const next = () => setTimeout(load, document.hidden ? SNAPSHOT_HIDDEN_GAP_MS : SNAPSHOT_GAP_MS);
    function load() {
      if (state.selected === null) {
        next();
        return;
      }
      counter += 1;
      img.src = `/api/streams/${encodeURIComponent(state.selected)}/snapshot.jpg?n=${counter}`;
    }
    img.addEventListener("load", () => {
      img.classList.remove("missing");
      note.hidden = true;
      next();
    });
    img.addEventListener("error", () => {
      img.classList.add("missing");
      note.hidden = false;
      next();
    });
    load();
  }

  // ------------------------------------------------------------------ start

  function start() {
    setupToken();
    state.filled = editorValues();
    $("stream-select").addEventListener("change", (e) => selectStream(e.target.value));
    $("add-form").addEventListener("submit", onAdd);
    $("replace-form").addEventListener("submit", onReplace);
    $("replace-reset").addEventListener("click", () => fillEditor(true));
    setConnection("idle", "not connected");
    loadInfo();
    pollStreams();
    setInterval(loadLabels, LABELS_POLL_MS);
    startSnapshots();
  }

  // Simple getters for browser tests.
  window.cliptagConsole = {
    selectedStream: () => state.selected,
    state: () => ({
      version: state.latest ? state.latest.label_set_version : null,
      frame: state.latest ? state.latest.frame : null,
      setVersion: state.set ? state.set.version : null,
      top: (state.latest && Array.isArray(state.latest.labels) ? state.latest.labels : [])
        .map((l) => ({ label: l.label, score: l.score })),
    }),
  };

  start();
})();
