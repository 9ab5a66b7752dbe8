// trainwire dashboard, sweeps: a form to start one, the list, and a sweep's view: every run's
// curve overlaid and coloured by the swept value, final loss vs the swept value (log-log, one
// line per seed), and the runs as a table sortable by final loss. Charts: uPlot (vendored).
"use strict";

(() => {
  const ui = window.trainwire.ui;
  const { api, el, withQuery, showBanner, formatLoss, formatTime, shortId } = ui;
  const $ = (selector, root = document) => root.querySelector(selector);
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  const POLL_MS = 2000;
  const SWEEPS_LIMIT = 20;
  const HISTORY_POINTS = 500; // ?max_points for each run's history on the sweep's stream
  const MAX_POINTS = 2000; // per run; above it every other older point is dropped
  const RETRY_MS = 2000;
  const AFTER_MAX = 512; // the longest id ?after= takes (longer ones go only in Last-Event-ID)
  const CHART_HEIGHT = 300;
  // Perceptually ordered colours (viridis, ends trimmed) for the swept values, low to high.
  const SCALE = ["#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39", "#e3c51a"];
  const SEED_DASHES = [[], [6, 3], [2, 3], [8, 3, 2, 3], [1, 2]];
  const NUMERIC = new Set(["batch_size", "d_in", "hidden", "d_out", "steps", "learning_rate", "momentum", "max_middle_layers"]);

  const state = {
    variants: new Map(),
    sweeps: new Map(), // id -> sweep object (list)
    order: [],
    view: null, // the open sweep (see openSweep)
    polling: false,
  };

  const sweepPath = (id) => `/v1/sweeps/${encodeURIComponent(id)}`;

  // ---------------------------------------------------------------- form

  async function loadVariants() {
    try {
      const list = await api("GET", "/v1/variants");
      state.variants = new Map((Array.isArray(list) ? list : []).map((v) => [v.name, v]));
      $("#s-variant").replaceChildren(...[...state.variants.keys()].map((n) => el("option", { value: n, text: n })));
      $("#s-variant").value = state.variants.has("nn") ? "nn" : $("#s-variant").value;
      buildForm();
    } catch (error) {
      if (error.status !== 401) showBanner(`Could not load the variants: ${error.message}`);
    }
  }

  function buildForm() {
    const variant = state.variants.get($("#s-variant").value);
    const defaults = (variant && variant.defaults) || {};
    const swept = $("#s-swept");
    const previous = swept.value;
    const fields = Object.keys(defaults).filter((name) => NUMERIC.has(name) && name !== "steps");
    swept.replaceChildren(...fields.map((name) => el("option", { value: name, text: name })));
    swept.value = fields.includes(previous) ? previous : "learning_rate";
    $("#s-steps").value = String(defaults.steps ?? 50);
    fillValues();
    if (!$("#s-seeds").value) $("#s-seeds").value = "0, 1";
    const devices = (variant && variant.devices) || [];
    const device = $("#s-device");
    const before = device.value;
    const choices = ["auto", ...devices];
    device.replaceChildren(...choices.map((d) => el("option", { value: d, text: d })));
    device.value = choices.includes(before) ? before : "auto";
    clearErrors();
  }

  // A few values around the default: a decade either side for a rate, halves and doubles else.
  function fillValues() {
    const variant = state.variants.get($("#s-variant").value);
    const name = $("#s-swept").value;
    const value = variant && variant.defaults ? variant.defaults[name] : undefined;
    let values = [];
    if (name === "learning_rate" && typeof value === "number") values = [value / 10, value / 3, value, value * 3];
    else if (name === "momentum") values = [0.5, 0.9, 0.99];
    else if (typeof value === "number") values = [Math.max(1, Math.round(value / 2)), value, value * 2];
    $("#s-values").value = values.map((v) => (v !== 0 && Math.abs(v) < 1e-3 ? Number(v.toPrecision(3)).toExponential() : String(Number(v.toPrecision(3))))).join(", ");
  }

  function parseList(text) {
    return text
      .split(/[\s,]+/)
      .filter(Boolean)
      .map((part) => {
        const number = Number(part);
        return part !== "" && Number.isFinite(number) ? number : part; // the server names what is wrong
      });
  }

  function collectSweep() {
    const name = $("#s-swept").value;
    const grid = {};
    grid[name] = parseList($("#s-values").value);
    const seeds = parseList($("#s-seeds").value);
    if (seeds.length) grid.seed = seeds;
    const body = { variant: $("#s-variant").value, grid, device: $("#s-device").value || "auto" };
    const steps = $("#s-steps").value.trim();
    if (steps !== "" && name !== "steps") body.hyperparameters = { steps: Number.isFinite(Number(steps)) ? Number(steps) : steps };
    const fuse = $("#s-fuse").value;
    body.fuse = fuse === "auto" ? "auto" : fuse === "true";
    const label = $("#s-label").value.trim();
    if (label) body.label = label;
    return body;
  }

  function clearErrors() {
    for (const node of document.querySelectorAll("#sweep-form .field-error")) node.textContent = "";
  }

  // 422: loc ["body", "grid", <field>, <index>] goes under Values (or Seeds), the rest by name.
  function showErrors(detail) {
    const items = Array.isArray(detail) ? detail : [{ loc: [], msg: String((detail && detail.message) || detail) }];
    const swept = $("#s-swept").value;
    for (const item of items) {
      const loc = Array.isArray(item.loc) ? item.loc.map(String) : [];
      let name = "form";
      if (loc[1] === "grid" && loc[2] === "seed") name = "seeds";
      else if (loc[1] === "grid" && loc[2] === swept) name = "values";
      else if (loc[1] === "hyperparameters" && loc[2] === "steps") name = "steps";
      else if (loc.length === 2 && ["variant", "device", "fuse", "label"].includes(loc[1])) name = loc[1];
      const target = $(`#sweep-form .field-error[data-for="${name}"]`) || $("#sweep-form-error");
      target.textContent = target.textContent ? `${target.textContent} ${item.msg}` : item.msg;
    }
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearErrors();
    const button = $("#submit-sweep");
    button.disabled = true;
    $("#sweep-form-status").textContent = "Starting\u2026";
    try {
      const sweep = await api("POST", "/v1/sweeps", collectSweep());
      $("#sweep-form-status").textContent = `Started ${shortId(sweep.id)} (${sweep.jobs.length} runs)`;
      state.sweeps.set(sweep.id, sweep);
      if (!state.order.includes(sweep.id)) state.order.unshift(sweep.id);
      renderList();
      openSweep(sweep.id);
    } catch (error) {
      $("#sweep-form-status").textContent = "";
      if (error.status === 422) showErrors(error.data && error.data.detail);
      else if (error.status !== 401) showBanner(`Could not start the sweep: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- list

  async function refreshList() {
    if (state.polling || document.hidden) return;
    state.polling = true;
    try {
      const data = await api("GET", withQuery("/v1/sweeps", { limit: SWEEPS_LIMIT }));
      state.order = [];
      for (const sweep of (data && data.items) || []) {
        state.sweeps.set(sweep.id, sweep);
        state.order.push(sweep.id);
      }
      renderList();
      $("#sweeps-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch {
      /* the job list reports the connection */
    } finally {
      state.polling = false;
    }
  }

  function renderList() {
    const body = $("#sweeps tbody");
    const rows = state.order.map((id) => {
      const sweep = state.sweeps.get(id);
      const runs = sweep.jobs.length;
      const done = runs - sweep.counts.queued - sweep.counts.running - (sweep.counts.paused || 0);
      const tr = el(
        "tr",
        { "data-sweep-id": id, "data-status": sweep.status, class: state.view && state.view.id === id ? "is-open" : "" },
        el("td", {}, el("span", { class: "job-id", text: shortId(id), title: id })),
        el("td", { class: "variant", text: sweep.variant }),
        el("td", {}, el("div", { class: "job-label", text: sweep.label || "" })),
        el("td", {}, el("span", { class: "status", "data-status": sweep.status, text: sweep.status })),
        el("td", { class: "runs", text: `${done} / ${runs}${sweep.fused ? " \u00b7 fused" : ""}` }),
        el("td", { class: "created", text: formatTime(sweep.created_at) }),
      );
      tr.addEventListener("click", () => openSweep(id));
      return tr;
    });
    body.replaceChildren(...rows);
    $("#sweeps-empty").hidden = rows.length > 0;
  }

  // ---------------------------------------------------------------- the open sweep

  function sweptField(sweep) {
    return Object.keys(sweep.grid).find((name) => name !== "seed") || "seed";
  }

  function runValue(sweep, run, field) {
    return field === "seed" ? run.seed : run.hyperparameters[field];
  }

  // The colour of a swept value: its rank among the grid's values, along the scale.
  function colorOf(sweep, value) {
    const field = sweptField(sweep);
    const values = [...(sweep.grid[field] || [])].sort((a, b) => (a > b ? 1 : a < b ? -1 : 0));
    const rank = Math.max(0, values.indexOf(value));
    const at = values.length > 1 ? rank / (values.length - 1) : 0.5;
    return SCALE[Math.round(at * (SCALE.length - 1))];
  }

  function closeView() {
    const view = state.view;
    if (!view) return;
    view.alive = false;
    if (view.source) view.source.close();
    clearTimeout(view.retryTimer);
    for (const chart of [view.curves, view.finals]) if (chart) chart.destroy();
    if (view.resize) view.resize.disconnect();
    state.view = null;
  }

  async function openSweep(id) {
    closeView();
    const view = {
      id,
      sweep: null,
      points: new Map(), // job id -> [[step, loss | null], ...], steps increasing
      follow: "loading", // loading | stream | retry | done | gone
      source: null,
      sweepEvents: 0,
      lastId: "", // the id of the stream's latest event that had one: where a reconnect goes on
      alive: true,
      sort: { key: "final", dir: 1 },
      curves: null,
      finals: null,
      frame: 0,
      retryTimer: 0,
      resize: null,
    };
    state.view = view;
    renderList();
    $("#sweep-view").hidden = false;
    $("#sweep-view").dataset.sweepId = id;
    try {
      view.sweep = await api("GET", sweepPath(id));
    } catch (error) {
      if (error.status === 404) view.follow = "gone";
      else if (error.status !== 401) showBanner(`Could not open the sweep: ${error.message}`);
      return;
    }
    if (!view.alive) return;
    buildView(view);
    openStream(view);
  }

  function openStream(view) {
    // a stream opened again after it failed goes on from the last event's id, as the browser's
    // own reconnects do with Last-Event-ID (an id too long for ?after= starts it over)
    const after = view.lastId && view.lastId.length <= AFTER_MAX ? view.lastId : null;
    const url = withQuery(`${sweepPath(view.id)}/events`, {
      max_points: HISTORY_POINTS,
      after,
      access_token: ui.token() || null,
    });
    const source = new EventSource(url);
    view.source = source;
    view.follow = "stream";
    const current = () => view.alive && view.source === source;
    let opened = false;
    source.addEventListener("open", () => {
      if (!current()) return;
      // a stream opened without an id starts with the whole history; the browser's own
      // reconnects (Last-Event-ID) and one opened with ?after= go on from where it stood
      if (!opened && !after) view.points = new Map();
      opened = true;
      view.sweepEvents = 0;
    });
    source.addEventListener("sweep", (event) => {
      if (!current()) return;
      const sweep = JSON.parse(event.data);
      if (event.lastEventId) view.lastId = event.lastEventId;
      view.sweepEvents++;
      view.sweep = sweep;
      state.sweeps.set(sweep.id, sweep);
      // the first event tells where the sweep stands; a later final one ends the stream
      if (FINAL.has(sweep.status) && view.sweepEvents > 1) {
        source.close();
        view.source = null;
        view.follow = "done";
        renderList();
      }
      schedule(view);
    });
    source.addEventListener("loss", (event) => {
      if (!current()) return;
      const data = JSON.parse(event.data);
      if (event.lastEventId) view.lastId = event.lastEventId;
      let points = view.points.get(data.job_id);
      if (!points) view.points.set(data.job_id, (points = []));
      if (points.length && data.step <= points[points.length - 1][0]) return;
      points.push([data.step, typeof data.loss === "number" ? data.loss : null]);
      if (points.length > MAX_POINTS) thin(points);
      schedule(view);
    });
    source.addEventListener("error", () => {
      if (!current() || source.readyState !== EventSource.CLOSED) return; // the browser retries
      view.source = null;
      view.follow = "retry";
      view.retryTimer = setTimeout(() => view.alive && openStream(view), RETRY_MS);
    });
  }

  // Drops every other point of the older half: a long run keeps its shape in bounded memory.
  function thin(points) {
    const half = points.length >> 1;
    const older = points.slice(0, half).filter((_, i) => i % 2 === 0);
    points.splice(0, half, ...older);
  }

  function schedule(view) {
    if (view.frame) return;
    view.frame = requestAnimationFrame(() => {
      view.frame = 0;
      if (view.alive) render(view);
    });
  }

  function buildView(view) {
    const sweep = view.sweep;
    const field = sweptField(sweep);
    $("#sweep-title").textContent = `${sweep.label || shortId(sweep.id)} \u00b7 ${sweep.variant}`;
    $("#sweep-color-field").textContent = field;
    $("#sweep-x-field").textContent = field;
    $("#sweep-cancel").onclick = () => cancelSweep(view);
    const head = $("#sweep-runs thead tr");
    const columns = [
      ...Object.keys(sweep.grid).map((name) => [name, name]),
      ["status", "status"],
      ["step", "step"],
      ["final", "final loss"],
    ];
    head.replaceChildren(
      ...columns.map(([key, text]) => {
        const button = el("button", { type: "button", text });
        button.addEventListener("click", () => {
          view.sort = { key, dir: view.sort.key === key ? -view.sort.dir : 1 };
          renderTable(view);
        });
        return el("th", { "data-sort": key, class: key === "final" || key === "step" ? "num" : "" }, button);
      }),
    );
    const curves = $("#sweep-curves");
    const finals = $("#sweep-finals");
    const curvesSetup = curvesOptions(view, curves);
    const finalsSetup = finalsOptions(view, finals);
    view.curves = new uPlot(curvesSetup, curvesSetup.series.map(() => []), curves);
    view.finals = new uPlot(finalsSetup, finalsSetup.series.map(() => []), finals);
    view.resize = new ResizeObserver(() => {
      if (view.curves) view.curves.setSize(sizeOf(curves));
      if (view.finals) view.finals.setSize(sizeOf(finals));
    });
    view.resize.observe(curves);
    view.resize.observe(finals);
    render(view);
  }

  function sizeOf(node) {
    return { width: Math.max(200, node.clientWidth), height: CHART_HEIGHT };
  }

  // Log axes: a label at each power of ten only (uPlot puts a split at every 1..9 x 10^k).
  function decades(u, splits) {
    return splits.map((v) => {
      const exponent = Math.log10(v);
      if (!(v > 0) || Math.abs(exponent - Math.round(exponent)) > 1e-9) return "";
      const k = Math.round(exponent);
      return Math.abs(k) <= 3 ? String(Number(v.toPrecision(1))) : `1e${k}`;
    });
  }

  const GRID = { stroke: "#eef1f5", width: 1 };

  function logAxis(label) {
    return { label, size: 52, values: decades, grid: GRID };
  }

  function curvesOptions(view, node) {
    const sweep = view.sweep;
    const field = sweptField(sweep);
    const seeds = sweep.grid.seed || [];
    return {
      ...sizeOf(node),
      legend: { show: false },
      cursor: { focus: { prox: 24 }, points: { show: false } },
      focus: { alpha: 0.25 },
      scales: { x: { time: false }, y: { distr: 3 } },
      axes: [{ label: "step", grid: GRID }, logAxis("loss")],
      series: [
        {},
        ...sweep.jobs.map((run) => ({
          label: `${field}=${runValue(sweep, run, field)} seed=${run.seed}`,
          stroke: colorOf(sweep, runValue(sweep, run, field)),
          width: 1.5,
          dash: SEED_DASHES[Math.max(0, seeds.indexOf(run.seed)) % SEED_DASHES.length],
          spanGaps: false,
          points: { show: false },
        })),
      ],
      hooks: {
        setSeries: [
          (u, index) => {
            const run = index ? sweep.jobs[index - 1] : null;
            $("#sweep-focus").textContent = run ? `\u00b7 ${u.series[index].label}: ${formatLoss(lastLoss(view, run))}` : "";
          },
        ],
      },
    };
  }

  // Final loss vs the swept value: one line per seed (and per value of any other grid field).
  function finalsGroups(sweep) {
    const field = sweptField(sweep);
    const groups = new Map();
    for (const run of sweep.jobs) {
      const key = Object.keys(sweep.grid)
        .filter((name) => name !== field)
        .map((name) => `${name}=${runValue(sweep, run, name)}`)
        .join(" ");
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(run);
    }
    return groups;
  }

  // The swept values along x: log-spaced when all are positive numbers, linear for other
  // numbers, and by position (labelled with the value) for words (a dtype).
  function sweptAxis(sweep) {
    const field = sweptField(sweep);
    const values = [...(sweep.grid[field] || [])].sort((a, b) => (a > b ? 1 : a < b ? -1 : 0));
    const numbers = values.every((v) => typeof v === "number");
    if (numbers && values.every((v) => v > 0)) return { values, xs: values, distr: 3, axis: logAxis(field) };
    if (numbers) return { values, xs: values, distr: 1, axis: { label: field } };
    const label = (u, splits) => splits.map((v) => (Number.isInteger(v) && v in values ? String(values[v]) : ""));
    return { values, xs: values.map((_, i) => i), distr: 1, axis: { label: field, values: label } };
  }

  function finalsOptions(view, node) {
    const sweep = view.sweep;
    const x = sweptAxis(sweep);
    const groups = [...finalsGroups(sweep).keys()];
    return {
      ...sizeOf(node),
      legend: { show: groups.length > 1 && groups.length <= 12 },
      cursor: { points: { size: 7 } },
      scales: { x: { time: false, distr: x.distr }, y: { distr: 3 } },
      axes: [x.axis, logAxis("final loss")],
      series: [
        { label: sweptField(sweep) },
        ...groups.map((key, i) => ({
          label: key || "runs",
          stroke: SCALE[Math.round(((i + 0.5) / groups.length) * (SCALE.length - 1))],
          width: 1.5,
          spanGaps: true,
          points: { show: true, size: 6 },
        })),
      ],
    };
  }

  function lastLoss(view, run) {
    const points = view.points.get(run.id);
    const last = points && points.length ? points[points.length - 1][1] : null;
    return last ?? run.last_loss;
  }

  // The run's loss at its last step (null while it has none, or when it ended non-finite).
  function finalLoss(view, run) {
    const value = lastLoss(view, run);
    return typeof value === "number" && Number.isFinite(value) && value > 0 ? value : null;
  }

  function render(view) {
    const sweep = view.sweep;
    $("#sweep-view").dataset.status = sweep.status;
    $("#sweep-view").dataset.follow = view.follow;
    const badge = $("#sweep-status");
    badge.dataset.status = sweep.status;
    badge.textContent = sweep.status;
    const counts = Object.entries(sweep.counts).filter(([, n]) => n).map(([k, n]) => `${n} ${k}`);
    $("#sweep-counts").textContent = `${sweep.jobs.length} runs${sweep.fused ? ", fused" : ""}: ${counts.join(", ")}`;
    $("#sweep-cancel").hidden = FINAL.has(sweep.status);

    // every run's points on one step axis (uPlot.join: a step a run lacks is spanned, not a gap)
    const tables = sweep.jobs.map((run) => {
      const points = view.points.get(run.id) || [];
      return [points.map((p) => p[0]), points.map((p) => (p[1] !== null && p[1] > 0 ? p[1] : null))];
    });
    const joined = tables.some((t) => t[0].length) ? uPlot.join(tables) : [[], ...tables.map(() => [])];
    view.curves.setData(joined);

    const field = sweptField(sweep);
    const { values, xs } = sweptAxis(sweep);
    const lines = [...finalsGroups(sweep).values()].map((runs) =>
      values.map((value) => {
        const run = runs.find((r) => runValue(sweep, r, field) === value);
        return run ? finalLoss(view, run) : null;
      }),
    );
    view.finals.setData([xs, ...lines]);
    renderTable(view);
  }

  function renderTable(view) {
    const sweep = view.sweep;
    const fields = Object.keys(sweep.grid);
    const field = sweptField(sweep);
    const key = view.sort.key;
    const valueOf = (run) => {
      if (key === "final") return finalLoss(view, run);
      if (key === "status" || key === "step") return run[key];
      return runValue(sweep, run, key);
    };
    const runs = [...sweep.jobs].sort((a, b) => {
      const x = valueOf(a);
      const y = valueOf(b);
      if (x === null || x === undefined) return y === null || y === undefined ? 0 : 1; // none last
      if (y === null || y === undefined) return -1;
      return (x > y ? 1 : x < y ? -1 : 0) * view.sort.dir;
    });
    for (const th of document.querySelectorAll("#sweep-runs th")) {
      th.setAttribute("aria-sort", th.dataset.sort === key ? (view.sort.dir > 0 ? "ascending" : "descending") : "none");
    }
    $("#sweep-runs tbody").replaceChildren(
      ...runs.map((run) => {
        const final = finalLoss(view, run);
        const tr = el(
          "tr",
          { "data-job-id": run.id, "data-status": run.status },
          ...fields.map((name, i) =>
            el(
              "td",
              { class: `grid-value${name === "seed" ? " seed" : ""}` },
              i === 0 && name === field ? el("span", { class: "swatch", style: `background:${colorOf(sweep, runValue(sweep, run, field))}` }) : "",
              String(runValue(sweep, run, name)),
            ),
          ),
          el("td", {}, el("span", { class: "status", "data-status": run.status, text: run.status })),
          el("td", { class: "num step", text: `${run.step} / ${run.steps}` }),
          el("td", { class: "num run-final-loss", "data-final-loss": final === null ? "" : String(final), text: formatLoss(final) }),
        );
        tr.title = run.error ? `${run.error.code}: ${run.error.message}` : `job ${run.id}`;
        tr.addEventListener("dblclick", () => ui.showJob(run.id));
        return tr;
      }),
    );
  }

  async function cancelSweep(view) {
    const button = $("#sweep-cancel");
    button.disabled = true;
    try {
      // the stream tells how the runs end (the answer may come after its final event)
      await api("POST", `${sweepPath(view.id)}/cancel`);
    } catch (error) {
      if (error.status !== 401 && error.status !== 409) showBanner(`Could not cancel the sweep: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- hooks and start

  Object.assign(window.trainwire, {
    /** The open sweep: {id, status, follow, runs (job ids in the table's order)}, or null. */
    sweepView() {
      const view = state.view;
      if (!view || !view.sweep) return null;
      const runs = [...document.querySelectorAll("#sweep-runs tbody tr")].map((tr) => tr.dataset.jobId);
      return { id: view.id, status: view.sweep.status, follow: view.follow, runs };
    },
    /** A run's points held by the sweep view: [[step, loss], ...]. */
    sweepPoints(jobId) {
      const view = state.view;
      const points = view ? view.points.get(jobId) : null;
      return points ? points.map((p) => [p[0], p[1]]) : [];
    },
    openSweep,
  });

  function start() {
    $("#sweep-form").addEventListener("submit", onSubmit);
    $("#s-variant").addEventListener("change", buildForm);
    $("#s-swept").addEventListener("change", fillValues);
    $("#sweep-form").addEventListener("input", (event) => {
      const name = event.target.dataset && event.target.dataset.sweepField;
      const error = name && $(`#sweep-form .field-error[data-for="${name}"]`);
      if (error) error.textContent = "";
    });
    loadVariants();
    refreshList();
    setInterval(refreshList, POLL_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
