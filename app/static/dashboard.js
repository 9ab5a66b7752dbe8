// trainwire dashboard: job list, job form, live log-scale loss chart (uPlot, vendored).
"use strict";

(() => {
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  // paused ranks as running: it comes after running, and a resume shows as running again
  const STATUS_RANK = { queued: 0, running: 1, paused: 1, succeeded: 2, failed: 2, cancelled: 2 };
  const POLL_MS = 2000;
  const JOBS_LIMIT = 50;
  const HISTORY_POINTS = 2000; // max_points asked for when a job is put on the chart
  const MAX_POINTS = 4000; // per series; above it the older points are decimated
  const KEEP_RECENT = 1000; // newest points kept as they are when decimating
  const BUCKETS = 1000; // buckets for the older points, each keeps its min and max
  // Browsers open at most 6 HTTP/1.1 connections per host: past this many live streams,
  // further running jobs are followed by polling so that fetches are never starved.
  const MAX_STREAMS = 4;
  const MAX_TAIL_PAGES = 50;
  const TEXT_INTERVAL_MS = 250;
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 30000;
  const PALETTE = [
    "#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed",
    "#0891b2", "#db2777", "#65a30d", "#475569", "#ea580c",
  ];
  const STORE = { token: "trainwire.token", visible: "trainwire.visible", variant: "trainwire.variant" };

  const $ = (selector, root = document) => root.querySelector(selector);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else if (key in node) node[key] = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  // localStorage can be unavailable (private modes, file policies): the page still works.
  function load(key, fallback) {
    try {
      const raw = localStorage.getItem(key);
      return raw === null ? fallback : JSON.parse(raw);
    } catch {
      return fallback;
    }
  }

  function save(key, value) {
    try {
      if (value === null || value === undefined) localStorage.removeItem(key);
      else localStorage.setItem(key, JSON.stringify(value));
    } catch {
      /* not persisted */
    }
  }

  const state = {
    token: load(STORE.token, ""),
    variants: new Map(),
    jobs: new Map(), // id -> job object
    order: [], // ids of the job list, newest first
    rows: new Map(), // id -> <tr>
    series: new Map(), // id -> series on the chart
    wanted: new Set(load(STORE.visible, [])), // ids the user keeps on the chart
    firstVisit: load(STORE.visible, null) === null,
    restored: false,
    authNeeded: false,
    polling: false,
    updatedAt: null, // when the job list was last fetched
    dirtyRows: new Set(),
    frame: 0,
    textAt: -Infinity,
    textTimer: 0,
  };

  // ---------------------------------------------------------------- HTTP

  class ApiError extends Error {
    constructor(status, data, retryAfter) {
      super(describeError(status, data, retryAfter));
      this.status = status;
      this.data = data;
      this.retryAfter = retryAfter;
    }
  }

  function describeError(status, data, retryAfter) {
    if (status === 0) return "Cannot reach the server.";
    const detail = data && typeof data === "object" ? data.detail : data;
    let text = "";
    if (typeof detail === "string") text = detail;
    else if (detail && typeof detail.message === "string") text = detail.message;
    else if (Array.isArray(detail)) text = detail.map((d) => d && d.msg).filter(Boolean).join("; ");
    if (status === 429) {
      const wait = retryAfter ? ` Try again in ${retryAfter} s.` : " Try again later.";
      return `The job queue is full.${wait}${text ? ` (${text})` : ""}`;
    }
    if (status === 401) return "This server needs an API token.";
    return text ? `${text} (HTTP ${status})` : `The server answered HTTP ${status}.`;
  }

  function authHeaders(extra = {}) {
    const headers = { ...extra };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    return headers;
  }

  async function api(method, path, body) {
    const sentToken = state.token;
    const headers = authHeaders({ Accept: "application/json" });
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch {
      throw new ApiError(0, null, null);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = text;
      }
    }
    // A request that left before a new token was saved says nothing about the new token.
    if (response.status === 401 && sentToken === state.token) requireToken();
    if (!response.ok) throw new ApiError(response.status, data, response.headers.get("Retry-After"));
    return data;
  }

  function withQuery(path, params) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
    }
    const text = query.toString();
    return text ? `${path}?${text}` : path;
  }

  const jobPath = (id) => `/v1/jobs/${encodeURIComponent(id)}`;

  // ---------------------------------------------------------------- banner, auth

  function showBanner(message, kind = "error") {
    const banner = $("#banner");
    banner.dataset.kind = kind;
    $(".banner-text", banner).textContent = message;
    banner.hidden = false;
  }

  function hideBanner() {
    $("#banner").hidden = true;
  }

  function setConnection(stateName, title) {
    const dot = $("#connection");
    dot.dataset.state = stateName;
    dot.title = title;
  }

  function requireToken() {
    if (state.authNeeded) return;
    state.authNeeded = true;
    const form = $("#auth");
    form.hidden = false;
    $("#auth-message").textContent = state.token ? "The saved token was refused." : "";
    setConnection("auth", "An API token is needed");
    if (document.activeElement === document.body) $("#token").focus();
  }

  function onTokenSaved(event) {
    event.preventDefault();
    state.token = $("#token").value.trim();
    save(STORE.token, state.token || null);
    $("#token").value = "";
    $("#auth").hidden = true;
    state.authNeeded = false;
    setConnection("ok", "Connected");
    hideBanner();
    if (state.variants.size === 0) loadVariants();
    refreshJobs();
    for (const series of state.series.values()) {
      if (series.mode === "auth") startSeries(series);
    }
  }

  // ---------------------------------------------------------------- jobs

  function isFinal(job) {
    return Boolean(job) && FINAL.has(job.status);
  }

  // Snapshots from the list poll, status events and loss events arrive out of order:
  // never let an older one move a job back (final stays final, steps only grow).
  function mergeJob(job) {
    const old = state.jobs.get(job.id);
    if (old) {
      const oldRank = STATUS_RANK[old.status] ?? 0;
      const newRank = STATUS_RANK[job.status] ?? 0;
      if (newRank < oldRank) return old;
      if (newRank === oldRank && !isFinal(job) && (old.step ?? 0) > (job.step ?? 0)) {
        job.step = old.step;
        job.last_loss = old.last_loss;
      }
    }
    state.jobs.set(job.id, job);
    markRow(job.id);
    return job;
  }

  async function refreshJobs() {
    if (state.polling) return;
    state.polling = true;
    try {
      const data = await api("GET", withQuery("/v1/jobs", { limit: JOBS_LIMIT }));
      const items = Array.isArray(data && data.items) ? data.items : [];
      const order = [];
      for (const item of items) {
        if (!item || typeof item.id !== "string") continue;
        mergeJob(item);
        order.push(item.id);
      }
      state.order = order;
      state.updatedAt = new Date();
      renderJobList();
      if (!state.authNeeded) setConnection("ok", "Connected");
      if (!state.restored) {
        state.restored = true;
        if (state.firstVisit && order.length > 0) {
          // Nothing chosen yet: put the newest job on the chart so the page is not blank.
          state.wanted.add(order[0]);
        }
        // Jobs kept on the chart last time (older ones too; deleted ones drop out).
        for (const id of [...state.wanted]) showSeries(id);
        saveWanted();
      }
    } catch (error) {
      if (error.status === 0) setConnection("lost", "Cannot reach the server");
    } finally {
      state.polling = false;
    }
  }

  async function tick() {
    if (document.hidden) return;
    await refreshJobs();
    for (const series of state.series.values()) followSeries(series);
  }

  async function cancelJob(id, button) {
    button.disabled = true;
    try {
      mergeJob(await api("POST", `${jobPath(id)}/cancel`));
      renderDirtyRows();
    } catch (error) {
      if (error.status !== 401) showBanner(`Could not cancel job ${shortId(id)}: ${error.message}`);
      refreshJobs();
    } finally {
      button.disabled = false;
    }
  }

  async function deleteJob(id, button) {
    button.disabled = true;
    try {
      await api("DELETE", jobPath(id));
      forgetJob(id);
    } catch (error) {
      if (error.status === 404) forgetJob(id);
      else if (error.status !== 401) showBanner(`Could not delete job ${shortId(id)}: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  function forgetJob(id) {
    hideSeries(id);
    state.jobs.delete(id);
    state.order = state.order.filter((other) => other !== id);
    renderJobList();
  }

  // A plain link cannot send the bearer token: with a token, fetch the CSV and save it.
  async function downloadCsv(event, id) {
    if (!state.token) return;
    event.preventDefault();
    try {
      const response = await fetch(event.currentTarget.href, {
        headers: authHeaders({ Accept: "text/csv" }),
      });
      if (response.status === 401) requireToken();
      if (!response.ok) throw new ApiError(response.status, await response.text(), null);
      const url = URL.createObjectURL(await response.blob());
      const link = el("a", { href: url, download: `trainwire-${id}.csv` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (error) {
      if (error.status !== 401) showBanner(`Could not download the losses: ${error.message}`);
    }
  }

  // ---------------------------------------------------------------- job table

  function shortId(id) {
    return String(id).slice(0, 8);
  }

  function formatLoss(value) {
    if (value === null || value === undefined) return "\u2014";
    if (typeof value !== "number" || !Number.isFinite(value)) return "non-finite";
    const abs = Math.abs(value);
    if (abs !== 0 && (abs >= 1e5 || abs < 1e-3)) {
      return value.toExponential(3).replace("e+", "e");
    }
    return String(Number(value.toPrecision(5)));
  }

  function formatStep(step) {
    if (step >= 10000) return `${Number((step / 1000).toPrecision(4))}k`;
    return String(step);
  }

  function formatTime(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso;
    const today = new Date();
    if (date.toDateString() === today.toDateString()) return date.toLocaleTimeString();
    return date.toLocaleString();
  }

  function createRow(id) {
    const show = el("input", { type: "checkbox", class: "show-toggle", "aria-label": "Show on chart" });
    show.addEventListener("change", () => (show.checked ? showSeries(id, true) : hideSeries(id)));
    const csv = el("a", { class: "action csv", text: "CSV", title: "Download the losses as CSV" });
    csv.href = withQuery(`${jobPath(id)}/losses`, { format: "csv" });
    csv.setAttribute("download", `trainwire-${id}.csv`);
    csv.addEventListener("click", (event) => downloadCsv(event, id));
    const cancel = el("button", { type: "button", class: "action cancel", text: "Cancel" });
    cancel.addEventListener("click", () => cancelJob(id, cancel));
    const remove = el("button", {
      type: "button", class: "action danger delete", text: "Delete", title: "Delete the job and its losses",
    });
    remove.addEventListener("click", () => deleteJob(id, remove));

    const row = el(
      "tr",
      { "data-job-id": id },
      el("td", { class: "col-show" }, el("label", { class: "swatch-cell" }, show, el("span", { class: "swatch" }))),
      el("td", {}, el("span", { class: "job-id", text: shortId(id), title: id })),
      el("td", { class: "variant" }),
      el("td", {}, el("div", { class: "job-label" })),
      el("td", {}, el("span", { class: "status" }), el("span", { class: "job-error" }), el("span", { class: "job-waiting" })),
      el(
        "td",
        {},
        el("div", { class: "progress" }, el("span", { class: "step" }), el("div", { class: "bar" }, el("span"))),
      ),
      el("td", { class: "num last-loss" }),
      el("td", { class: "created" }),
      el("td", {}, el("div", { class: "actions" }, cancel, csv, remove)),
    );
    state.rows.set(id, row);
    return row;
  }

  function waitingText(waiting) {
    const message = String(waiting.message || waiting.reason || "");
    const eta = waiting.estimated_start_seconds;
    if (typeof eta !== "number") return message;
    const when = eta < 90 ? `${Math.max(1, Math.round(eta))} s` : `${Math.round(eta / 60)} min`;
    return `${message}; starts in about ${when}`;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function updateRow(row, job) {
    const status = String(job.status || "");
    row.dataset.status = status;
    const badge = $(".status", row);
    badge.dataset.status = status;
    setText(badge, status);
    const error = job.error && typeof job.error === "object" ? job.error : null;
    const errorNode = $(".job-error", row);
    setText(errorNode, error ? error.code || "error" : "");
    errorNode.title = error && error.message ? error.message : "";
    // a queued job says why it waits (from the list's answers; a status event has no reason)
    const waiting = status === "queued" && job.waiting && typeof job.waiting === "object" ? job.waiting : null;
    const waitNode = $(".job-waiting", row);
    setText(waitNode, waiting ? waitingText(waiting) : "");
    waitNode.title = waiting ? `reason: ${waiting.reason}; ${waiting.ahead} ahead, ${waiting.running} running, ${waiting.workers} workers` : "";
    setText($(".variant", row), job.variant || "");
    const label = $(".job-label", row);
    setText(label, job.label || "");
    label.title = job.label || "";
    const steps = job.steps ?? (job.hyperparameters && job.hyperparameters.steps);
    const step = job.step ?? 0;
    setText($(".step", row), steps ? `${step} / ${steps}` : String(step));
    $(".bar > span", row).style.width = steps ? `${Math.min(100, (100 * step) / steps)}%` : "0";
    setText($(".last-loss", row), formatLoss(job.last_loss));
    const created = $(".created", row);
    setText(created, formatTime(job.created_at));
    created.title = [
      job.created_at && `created ${job.created_at}`,
      job.started_at && `started ${job.started_at}`,
      job.finished_at && `finished ${job.finished_at}`,
    ].filter(Boolean).join("\n");
    $(".cancel", row).hidden = isFinal(job);
    $(".delete", row).hidden = !isFinal(job);
    const series = state.series.get(job.id);
    const toggle = $(".show-toggle", row);
    toggle.checked = Boolean(series);
    row.classList.toggle("is-shown", Boolean(series));
    $(".swatch", row).style.background = series ? series.color : "transparent";
  }

  function markRow(id) {
    state.dirtyRows.add(id);
    scheduleRender();
  }

  function renderDirtyRows() {
    for (const id of state.dirtyRows) {
      const row = state.rows.get(id);
      const job = state.jobs.get(id);
      if (row && job) updateRow(row, job);
    }
    state.dirtyRows.clear();
  }

  function renderJobList() {
    const body = $("#jobs tbody");
    const keep = new Set(state.order);
    for (const [id, row] of state.rows) {
      if (!keep.has(id)) {
        row.remove();
        state.rows.delete(id);
      }
    }
    let cursor = body.firstElementChild;
    for (const id of state.order) {
      const row = state.rows.get(id) || createRow(id);
      updateRow(row, state.jobs.get(id));
      if (row !== cursor) body.insertBefore(row, cursor);
      else cursor = cursor.nextElementSibling;
    }
    $("#jobs-empty").hidden = state.order.length > 0;
    const count = state.order.length;
    const shown = count === JOBS_LIMIT ? `newest ${JOBS_LIMIT}` : `${count} job${count === 1 ? "" : "s"}`;
    const updated = state.updatedAt ? ` \u00b7 updated ${state.updatedAt.toLocaleTimeString()}` : "";
    $("#jobs-updated").textContent = shown + updated;
    state.dirtyRows.clear();
  }

  // ---------------------------------------------------------------- series (chart data)

  function nextColor() {
    const used = new Set([...state.series.values()].map((series) => series.color));
    return PALETTE.find((color) => !used.has(color)) || PALETTE[state.series.size % PALETTE.length];
  }

  function saveWanted() {
    save(STORE.visible, [...state.wanted]);
  }

  function showSeries(id, userChoice = false) {
    if (state.series.has(id)) return;
    const series = {
      id,
      color: nextColor(),
      points: [], // [step, loss | null], steps strictly increasing
      lastStep: -1,
      mode: "loading", // loading | stream | poll | retry | done | auth | gone
      source: null,
      statusEvents: 0,
      finalSeen: false,
      busy: false,
      retryDelay: RETRY_MIN_MS,
      retryTimer: 0,
      alive: true,
    };
    state.series.set(id, series);
    state.wanted.add(id);
    saveWanted();
    state.textAt = -Infinity; // the legend and the row follow at the next frame
    markRow(id);
    if (userChoice) flashRow(id);
    startSeries(series);
  }

  function hideSeries(id) {
    const series = state.series.get(id);
    state.wanted.delete(id);
    saveWanted();
    if (!series) return;
    series.alive = false;
    closeStream(series);
    clearTimeout(series.retryTimer);
    state.series.delete(id);
    state.textAt = -Infinity;
    markRow(id);
    scheduleRender();
  }

  function appendPoint(series, step, loss) {
    if (typeof step !== "number" || !(step > series.lastStep)) return false;
    const value = typeof loss === "number" && Number.isFinite(loss) ? loss : null;
    series.points.push([step, value]);
    series.lastStep = step;
    if (series.points.length > MAX_POINTS) decimate(series);
    return true;
  }

  function appendPage(series, page) {
    const steps = Array.isArray(page && page.steps) ? page.steps : [];
    const losses = Array.isArray(page && page.losses) ? page.losses : [];
    let added = 0;
    for (let i = 0; i < steps.length; i++) {
      if (appendPoint(series, steps[i], losses[i])) added++;
    }
    if (added) noteProgress(series);
    return added;
  }

  // Keeps the newest points as they are and squeezes the older ones into buckets of equal
  // step width, each keeping its lowest and highest loss (and its first gap), in step order.
  function decimate(series) {
    const points = series.points;
    const cut = points.length - KEEP_RECENT;
    const older = points.slice(0, cut);
    const first = older[0][0];
    const width = (older[older.length - 1][0] - first + 1) / BUCKETS;
    const kept = [];
    let bucket = -1;
    let low = null;
    let high = null;
    let gap = null;
    const flush = () => {
      const chosen = [low, high, gap].filter(Boolean);
      chosen.sort((a, b) => a[0] - b[0]);
      let previous = null;
      for (const point of chosen) {
        if (point !== previous) kept.push(point);
        previous = point;
      }
    };
    for (const point of older) {
      const index = Math.floor((point[0] - first) / width);
      if (index !== bucket) {
        if (bucket >= 0) flush();
        bucket = index;
        low = high = gap = null;
      }
      if (point[1] === null) {
        if (!gap) gap = point;
      } else {
        if (!low || point[1] < low[1]) low = point;
        if (!high || point[1] > high[1]) high = point;
      }
    }
    flush();
    series.points = kept.concat(points.slice(cut));
  }

  // The job row follows the freshest point we hold (called for every live loss: keep it cheap).
  function noteProgress(series) {
    const job = state.jobs.get(series.id);
    const last = series.points[series.points.length - 1];
    if (job && last && !isFinal(job) && last[0] + 1 >= (job.step ?? 0)) {
      job.step = last[0] + 1;
      job.last_loss = last[1];
      markRow(series.id);
    }
    scheduleRender();
  }

  async function startSeries(series) {
    series.mode = "loading";
    try {
      if (!state.jobs.has(series.id)) mergeJob(await api("GET", jobPath(series.id)));
      if (!series.alive) return;
      if (series.points.length === 0) {
        const page = await api(
          "GET",
          withQuery(`${jobPath(series.id)}/losses`, { max_points: HISTORY_POINTS }),
        );
        if (!series.alive) return;
        appendPage(series, page);
      }
      follow(series);
    } catch (error) {
      onSeriesError(series, error);
    }
  }

  function onSeriesError(series, error) {
    if (!series.alive) return;
    if (error.status === 404) {
      series.mode = "gone";
      forgetJob(series.id);
    } else if (error.status === 401) {
      series.mode = "auth";
    } else {
      scheduleRetry(series);
    }
  }

  function streamsOpen() {
    let count = 0;
    for (const series of state.series.values()) if (series.source) count++;
    return count;
  }

  // Decides how to keep a series current: done, a live stream, or polling the losses.
  function follow(series) {
    if (!series.alive) return;
    const job = state.jobs.get(series.id);
    if (isFinal(job)) {
      finishFromRest(series);
    } else if (streamsOpen() < MAX_STREAMS) {
      openStream(series);
    } else {
      series.mode = "poll";
    }
  }

  // Called on every poll tick.
  function followSeries(series) {
    if (!series.alive || series.busy) return;
    if (series.mode === "poll") {
      if (streamsOpen() < MAX_STREAMS) openStream(series);
      else pollTail(series);
    } else if (series.mode === "stream" && series.source && !series.finalSeen) {
      // A job that ended while its stream was reconnecting: the list poll saw it first.
      const job = state.jobs.get(series.id);
      if (isFinal(job) && series.source.readyState !== EventSource.OPEN) {
        closeStream(series);
        finishFromRest(series);
      }
    }
  }

  async function fetchTail(series) {
    for (let page = 0; page < MAX_TAIL_PAGES; page++) {
      const data = await api(
        "GET",
        withQuery(`${jobPath(series.id)}/losses`, { after: series.lastStep }),
      );
      if (!series.alive) return;
      const added = appendPage(series, data);
      if (!data || data.next_after === null || data.next_after === undefined || added === 0) return;
    }
  }

  async function pollTail(series) {
    series.busy = true;
    const wasFinal = isFinal(state.jobs.get(series.id));
    try {
      await fetchTail(series);
      if (wasFinal && series.alive) series.mode = "done";
    } catch (error) {
      onSeriesError(series, error);
    } finally {
      series.busy = false;
    }
  }

  async function finishFromRest(series) {
    series.mode = "loading";
    series.busy = true;
    try {
      await fetchTail(series);
      if (series.alive) series.mode = "done";
      scheduleRender();
    } catch (error) {
      onSeriesError(series, error);
    } finally {
      series.busy = false;
    }
  }

  function eventsUrl(series) {
    return withQuery(`${jobPath(series.id)}/events`, {
      after: series.lastStep >= 0 ? series.lastStep : null,
      access_token: state.token || null,
    });
  }

  function openStream(series) {
    closeStream(series);
    const source = new EventSource(eventsUrl(series));
    series.source = source;
    series.mode = "stream";
    series.statusEvents = 0;
    series.finalSeen = false;
    const current = () => series.alive && series.source === source;

    source.addEventListener("open", () => {
      if (!current()) return;
      series.statusEvents = 0; // counted per connection, reconnects included
      series.retryDelay = RETRY_MIN_MS;
    });
    source.addEventListener("status", (event) => {
      if (!current()) return;
      const job = parseJson(event.data);
      if (!job || typeof job !== "object") return;
      series.statusEvents++;
      mergeJob(job);
      if (FINAL.has(job.status)) {
        // A connection's first status event tells where the job stands, and for a job that
        // just ended the losses it has not sent yet still follow: only a later final status
        // (or `end`, or the end of the stream) means everything has arrived.
        if (series.statusEvents > 1) endStream(series);
        else series.finalSeen = true;
      }
    });
    source.addEventListener("loss", (event) => {
      if (!current()) return;
      const data = parseJson(event.data);
      if (!data || typeof data !== "object") return;
      if (appendPoint(series, data.step, data.loss)) noteProgress(series);
    });
    source.addEventListener("error", () => {
      if (!current()) return;
      if (series.finalSeen) {
        // The stream ended after a final status but without its closing event: whether it
        // was cut short cannot be told, so the rest comes from the losses endpoint.
        closeStream(series);
        finishFromRest(series);
      } else if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an error answer, a wrong content type): find out why, retry.
        closeStream(series);
        scheduleRetry(series);
      }
      // Otherwise the browser reconnects by itself, sending Last-Event-ID.
    });
  }

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch {
      return null;
    }
  }

  function closeStream(series) {
    if (series.source) {
      series.source.close();
      series.source = null;
    }
  }

  function endStream(series) {
    closeStream(series);
    series.mode = "done";
    scheduleRender();
    // A stream slot is free: let a polled series take it without waiting for the next tick.
    for (const other of state.series.values()) {
      if (other.mode === "poll" && !other.busy && streamsOpen() < MAX_STREAMS) openStream(other);
    }
  }

  function scheduleRetry(series) {
    clearTimeout(series.retryTimer);
    series.mode = "retry";
    const delay = series.retryDelay;
    series.retryDelay = Math.min(RETRY_MAX_MS, series.retryDelay * 2);
    series.retryTimer = setTimeout(() => recover(series), delay);
  }

  async function recover(series) {
    if (!series.alive) return;
    try {
      mergeJob(await api("GET", jobPath(series.id)));
      if (series.points.length === 0) startSeries(series);
      else follow(series);
    } catch (error) {
      onSeriesError(series, error);
    }
  }

  // ---------------------------------------------------------------- variants and the form

  function defaultsOf(variant) {
    return variant && variant.defaults && typeof variant.defaults === "object" ? variant.defaults : {};
  }

  async function loadVariants() {
    try {
      const data = await api("GET", "/v1/variants");
      const list = Array.isArray(data) ? data : Array.isArray(data && data.items) ? data.items : [];
      state.variants = new Map(list.filter((v) => v && v.name).map((v) => [v.name, v]));
      const select = $("#variant");
      select.replaceChildren(
        ...list.map((v) => el("option", { value: v.name, text: v.title ? `${v.name} \u2014 ${v.title}` : v.name })),
      );
      const remembered = load(STORE.variant, null);
      if (remembered && state.variants.has(remembered)) select.value = remembered;
      buildFields();
    } catch (error) {
      if (error.status !== 401) showBanner(`Could not load the variants: ${error.message}`);
    }
  }

  // Each field's kind, label and choices come from the variant's hyperparameters_schema (the
  // server's own models), so the form follows them without a table kept here.
  function schemaOf(variant, name) {
    const properties = variant && variant.hyperparameters_schema && variant.hyperparameters_schema.properties;
    return (properties && properties[name]) || {};
  }

  function fieldKind(schema, value) {
    if (Array.isArray(schema.enum)) return "choice";
    if (schema.type === "boolean" || typeof value === "boolean") return "bool";
    if (schema.type === "integer") return "int";
    if (schema.type === "number") return "float";
    if (typeof value === "number") return Number.isInteger(value) ? "int" : "float";
    return "text";
  }

  function fieldLabel(name, schema) {
    return schema.title || name;
  }

  function buildFields() {
    const variant = state.variants.get($("#variant").value);
    const defaults = defaultsOf(variant);
    $("#variant-description").textContent = (variant && variant.description) || "";
    const fields = Object.entries(defaults).map(([name, value]) => {
      const schema = schemaOf(variant, name);
      const kind = fieldKind(schema, value);
      const id = `f-${name}`;
      let input;
      if (kind === "choice") {
        const options = schema.enum.includes(value) ? schema.enum : [...schema.enum, String(value)];
        input = el("select", { id, name }, ...options.map((o) => el("option", { value: o, text: o })));
        input.value = value;
      } else if (kind === "bool") {
        input = el("input", { id, name, type: "checkbox" });
        input.checked = value;
      } else {
        input = el("input", {
          id,
          name,
          type: "text",
          inputmode: kind === "int" ? "numeric" : kind === "float" ? "decimal" : "text",
          autocomplete: "off",
        });
        input.spellcheck = false;
        input.value = formatDefault(value);
      }
      input.dataset.field = name;
      input.dataset.kind = kind;
      const label = el("label", { for: id, title: schema.description || name }, fieldLabel(name, schema));
      return el("div", { class: "field" }, label, input, el("p", { class: "field-error", "data-for": name }));
    });
    $("#hp-fields").replaceChildren(...fields);

    const devices = Array.isArray(variant && variant.devices) ? variant.devices : [];
    const device = $("#f-device");
    const previous = device.value;
    const choices = ["auto", ...devices.filter((d) => d !== "auto")];
    device.replaceChildren(...choices.map((d) => el("option", { value: d, text: d })));
    device.value = choices.includes(previous) ? previous : "auto";
    clearErrors();
  }

  // 1e-6 rather than 0.000001: how the tutorial writes its learning rates.
  function formatDefault(value) {
    if (typeof value === "number" && value !== 0 && Math.abs(value) < 1e-3) return value.toExponential();
    return String(value);
  }

  function parseValue(kind, raw, fallback) {
    if (kind === "int" || kind === "float") {
      const number = Number(raw);
      // Anything that is not a number goes as typed: the server names the field in its 422.
      return raw !== "" && Number.isFinite(number) ? number : raw;
    }
    return raw === "" ? fallback : raw;
  }

  function collectRequest() {
    const variantName = $("#variant").value;
    const defaults = defaultsOf(state.variants.get(variantName));
    const hyperparameters = {};
    for (const input of $("#hp-fields").querySelectorAll("[data-field]")) {
      const name = input.dataset.field;
      const kind = input.dataset.kind;
      let value;
      if (kind === "bool") value = input.checked;
      else {
        const raw = input.value.trim();
        if (raw === "") continue; // left empty: the variant's default
        value = parseValue(kind, raw, defaults[name]);
      }
      // Only what differs from the defaults: the server resolves the rest.
      if (value !== defaults[name]) hyperparameters[name] = value;
    }
    const request = { variant: variantName, hyperparameters, device: $("#f-device").value || "auto" };
    const seed = $("#f-seed").value.trim();
    if (seed !== "") {
      const number = Number(seed);
      request.seed = Number.isSafeInteger(number) ? number : seed;
    }
    const label = $("#f-label").value.trim();
    if (label !== "") request.label = label;
    return request;
  }

  function clearErrors() {
    for (const node of document.querySelectorAll("#job-form .field-error")) node.textContent = "";
    for (const node of document.querySelectorAll("#job-form .invalid")) {
      node.classList.remove("invalid");
      node.removeAttribute("aria-invalid");
    }
  }

  function addError(name, message) {
    const target =
      document.querySelector(`#job-form .field-error[data-for="${CSS.escape(name)}"]`) || $("#form-error");
    target.textContent = target.textContent ? `${target.textContent} ${message}` : message;
    const input = document.querySelector(`#job-form [data-field="${CSS.escape(name)}"]`);
    if (input) {
      input.classList.add("invalid");
      input.setAttribute("aria-invalid", "true");
    }
    return input;
  }

  // FastAPI's 422: {"detail": [{"loc": ["body", "hyperparameters", "learning_rate"], "msg": ...}]}.
  // The error goes to the innermost part of `loc` that has a field on the page.
  function showValidationErrors(detail) {
    if (!Array.isArray(detail)) {
      const text = typeof detail === "string" ? detail : detail && detail.message;
      addError("form", text || "The server refused the request.");
      return;
    }
    let firstInput = null;
    for (const item of detail) {
      const loc = Array.isArray(item && item.loc) ? item.loc.map(String) : [];
      const message = (item && item.msg) || "Invalid value.";
      let index = loc.length - 1;
      while (index >= 0 && !document.querySelector(`#job-form .field-error[data-for="${CSS.escape(loc[index])}"]`)) {
        index--;
      }
      let name = "form";
      let text = message;
      if (index >= 0) {
        name = loc[index];
        const rest = loc.slice(index + 1);
        if (rest.length) text = `${rest.join(".")}: ${message}`;
      } else {
        const where = loc.filter((part) => part !== "body").join(".");
        if (where) text = `${where}: ${message}`;
      }
      const input = addError(name, text);
      firstInput = firstInput || input;
    }
    if (firstInput) firstInput.focus();
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearErrors();
    const button = $("#submit-job");
    const status = $("#form-status");
    button.disabled = true;
    status.textContent = "Starting\u2026";
    try {
      const job = await api("POST", "/v1/jobs", collectRequest());
      status.textContent = `Started ${shortId(job.id)}`;
      setTimeout(() => {
        if (status.textContent === `Started ${shortId(job.id)}`) status.textContent = "";
      }, 4000);
      hideBanner();
      mergeJob(job);
      if (!state.order.includes(job.id)) state.order = [job.id, ...state.order];
      renderJobList();
      showSeries(job.id, true);
      refreshJobs();
    } catch (error) {
      status.textContent = "";
      if (error.status === 422) showValidationErrors(error.data && error.data.detail);
      else if (error.status !== 401) showBanner(`Could not start the job: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  function onFieldInput(event) {
    const input = event.target.closest("[data-field]");
    if (!input) return;
    const name = input.dataset.field;
    const error = document.querySelector(`#job-form .field-error[data-for="${CSS.escape(name)}"]`);
    if (error) error.textContent = "";
    input.classList.remove("invalid");
    input.removeAttribute("aria-invalid");
    if (name === "variant" && event.type === "change") {
      save(STORE.variant, input.value);
      buildFields();
    }
  }

  function flashRow(id) {
    const row = state.rows.get(id);
    if (!row) return;
    row.classList.remove("flash");
    void row.offsetWidth; // restart the animation
    row.classList.add("flash");
  }

  // ---------------------------------------------------------------- chart

  const chart = { plot: null, signature: "" };
  const CHART_HEIGHT = 420;
  const GRID = { stroke: "#eef1f5", width: 1 };

  // A label at each power of ten only: uPlot's log scale puts a split at every 1..9 x 10^k.
  function decades(u, splits) {
    return splits.map((v) => {
      const exponent = Math.log10(v);
      if (!(v > 0) || Math.abs(exponent - Math.round(exponent)) > 1e-9) return "";
      const k = Math.round(exponent);
      return Math.abs(k) <= 3 ? String(Number(v.toPrecision(1))) : `1e${k}`;
    });
  }

  // The chart is redrawn at most once a frame; the text around it (rows, legend) at most a few
  // times a second, which is all a reader can follow and spares layout work on fast runs.
  function scheduleRender() {
    if (state.frame) return;
    state.frame = requestAnimationFrame((now) => {
      state.frame = 0;
      drawChart();
      if (now - state.textAt >= TEXT_INTERVAL_MS) {
        state.textAt = now;
        renderDirtyRows();
        renderLegend();
      } else if (!state.textTimer) {
        state.textTimer = setTimeout(() => {
          state.textTimer = 0;
          scheduleRender();
        }, TEXT_INTERVAL_MS);
      }
    });
  }

  // The series on the chart, by id and colour: a new set makes a new plot, data alone does not.
  function chartSignature(seriesList) {
    return seriesList.map((series) => `${series.id}:${series.color}`).join(",");
  }

  function makePlot(seriesList) {
    const host = $("#chart-plot");
    if (chart.plot) chart.plot.destroy();
    const options = {
      width: Math.max(200, host.clientWidth),
      height: CHART_HEIGHT,
      legend: { show: false },
      scales: { x: { time: false }, y: { distr: 3 } },
      axes: [
        { label: "step", grid: GRID, values: (u, splits) => splits.map(formatStep) },
        { values: decades, size: 52, grid: GRID },
      ],
      series: [
        {},
        ...seriesList.map((series) => ({
          label: series.id,
          stroke: series.color,
          width: 1.6,
          spanGaps: false, // a null loss (non-finite) breaks the line; a step a job lacks does not
          points: { show: false },
        })),
      ],
      hooks: { setCursor: [renderHover] },
    };
    chart.plot = new uPlot(options, options.series.map(() => []), host);
    const canvas = chart.plot.ctx.canvas;
    canvas.id = "chart";
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "Loss per step of the jobs shown");
    chart.signature = chartSignature(seriesList);
  }

  function drawChart() {
    const seriesList = [...state.series.values()];
    const drawable = seriesList.some((series) => series.points.some((p) => p[1] !== null && p[1] > 0));
    $("#chart-empty").textContent =
      seriesList.length === 0
        ? "No job on the chart yet: tick \u201cChart\u201d in the job list."
        : "Waiting for the first loss\u2026";
    $("#chart-empty").hidden = drawable;
    if (!chart.plot || chartSignature(seriesList) !== chart.signature) makePlot(seriesList);
    // every job's points on one step axis: a loss that is not positive has no place on a log
    // scale and, like a non-finite one, leaves a gap
    const tables = seriesList.map((series) => [
      series.points.map((p) => p[0]),
      series.points.map((p) => (p[1] !== null && p[1] > 0 ? p[1] : null)),
    ]);
    chart.plot.setData(drawable ? uPlot.join(tables) : [[], ...tables.map(() => [])]);
    if (!drawable) $("#chart-tooltip").hidden = true;
  }

  function nearestPoint(points, step) {
    let lo = 0;
    let hi = points.length - 1;
    if (hi < 0) return null;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (points[mid][0] < step) lo = mid + 1;
      else hi = mid;
    }
    const candidates = [points[lo - 1], points[lo]].filter(Boolean);
    candidates.sort((a, b) => Math.abs(a[0] - step) - Math.abs(b[0] - step));
    return candidates[0];
  }

  // The hovered step's nearest loss of every job on the chart (uPlot's cursor hook).
  function renderHover(u) {
    const tooltip = $("#chart-tooltip");
    const idx = u.cursor.idx;
    if (idx === null || idx === undefined || !(u.cursor.left >= 0) || !u.data[0].length) {
      tooltip.hidden = true;
      return;
    }
    const step = u.data[0][idx];
    const { min, max } = u.scales.x;
    const slack = (4 * (max - min)) / Math.max(1, u.over.clientWidth); // a few pixels, in steps
    const rows = [];
    for (const series of state.series.values()) {
      const points = series.points;
      if (points.length === 0 || step < points[0][0] - slack || step > points[points.length - 1][0] + slack) continue;
      const point = nearestPoint(points, step);
      if (point) rows.push({ series, point });
    }
    if (rows.length === 0) {
      tooltip.hidden = true;
      return;
    }
    tooltip.replaceChildren(
      el("div", { class: "tt-step", text: `step ${step}` }),
      ...rows.map(({ series, point }) =>
        el(
          "div",
          { class: "tt-row" },
          el("span", { class: "swatch", style: `background:${series.color}` }),
          el("span", { text: seriesName(series.id, true) }),
          el("span", { class: "tt-value", text: formatLoss(point[1]) }),
        ),
      ),
    );
    tooltip.hidden = false;
    const wrap = tooltip.parentElement;
    const over = u.over.getBoundingClientRect();
    const box = wrap.getBoundingClientRect();
    const x = over.left - box.left + u.cursor.left;
    const y = over.top - box.top + u.cursor.top;
    const left = x + 14 + tooltip.offsetWidth > wrap.clientWidth ? x - 14 - tooltip.offsetWidth : x + 14;
    tooltip.style.left = `${Math.max(0, left)}px`;
    tooltip.style.top = `${Math.max(0, Math.min(y - 10, wrap.clientHeight - tooltip.offsetHeight))}px`;
  }

  function seriesName(id, short = false) {
    const job = state.jobs.get(id);
    const parts = [job ? job.variant : "?"];
    if (job && job.label) parts.push(job.label);
    if (!short || !(job && job.label)) parts.push(shortId(id));
    return parts.join(" \u00b7 ");
  }

  function renderLegend() {
    const legend = $("#legend");
    const seen = new Set();
    for (const series of state.series.values()) {
      seen.add(series.id);
      let item = legend.querySelector(`li[data-job-id="${CSS.escape(series.id)}"]`);
      if (!item) {
        const hide = el("button", { type: "button", class: "legend-hide", title: "Remove from the chart", text: "\u00d7" });
        hide.addEventListener("click", () => hideSeries(series.id));
        item = el(
          "li",
          { "data-job-id": series.id },
          el("span", { class: "swatch" }),
          el(
            "span",
            { class: "legend-text" },
            el("span", { class: "legend-name" }),
            el(
              "span",
              { class: "legend-stats" },
              el("span", { class: "legend-step" }),
              " \u00b7 ",
              el("span", { class: "legend-loss" }),
            ),
          ),
          hide,
        );
        legend.append(item);
      }
      $(".swatch", item).style.background = series.color;
      const name = seriesName(series.id);
      setText($(".legend-name", item), name);
      $(".legend-name", item).title = name;
      const job = state.jobs.get(series.id);
      const last = series.points[series.points.length - 1];
      item.title = job && job.steps ? `${job.status}, ${job.step ?? 0} of ${job.steps} steps done` : "";
      setText($(".legend-step", item), last ? `step ${last[0]}` : "no step yet");
      setText($(".legend-loss", item), last ? `loss ${last[1] === null ? "non-finite" : formatLoss(last[1])}` : job ? job.status : "");
    }
    for (const item of [...legend.children]) {
      if (!seen.has(item.dataset.jobId)) item.remove();
    }
  }

  // ---------------------------------------------------------------- start

  window.trainwire = {
    /** The points held for a job, [[step, loss], ...] in step order; loss is null where non-finite. */
    points(jobId) {
      const series = state.series.get(jobId);
      return series ? series.points.map((point) => [point[0], point[1]]) : [];
    },
    /** How the chart follows a job: null (not shown), loading, stream, poll, retry, done, auth, gone. */
    follow(jobId) {
      const series = state.series.get(jobId);
      return series ? series.mode : null;
    },
    /** Ids of the jobs on the chart. */
    shown() {
      return [...state.series.keys()];
    },
    /** What the sweep view (sweeps.js) shares with the page: requests, the token, banners, formats. */
    ui: {
      api, el, withQuery, showBanner, hideBanner, formatLoss, formatStep, formatTime, shortId,
      token: () => state.token,
      showJob: (id) => showSeries(id, true),
    },
  };

  function start() {
    $("#job-form").addEventListener("submit", onSubmit);
    $("#job-form").addEventListener("input", onFieldInput);
    $("#job-form").addEventListener("change", onFieldInput);
    $("#reset-defaults").addEventListener("click", buildFields);
    $("#auth").addEventListener("submit", onTokenSaved);
    $(".banner-close").addEventListener("click", hideBanner);
    const plot = $("#chart-plot");
    new ResizeObserver(() => {
      if (chart.plot) chart.plot.setSize({ width: Math.max(200, plot.clientWidth), height: CHART_HEIGHT });
    }).observe(plot);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
    loadVariants();
    refreshJobs();
    setInterval(tick, POLL_MS);
    scheduleRender();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
