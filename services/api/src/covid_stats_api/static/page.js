// covid-stats: the page at /. Draws the api's daily and derived series as SVG charts, with
// no library. Everything from the URL or the data reaches the page as text (textContent,
// setAttribute of numbers), never as markup. The api's URLs come from the page's <body>
// (data-* attributes the server writes from its routes). With an "as of" instant in the view,
// every request for a document (the series, the list of places) carries as_of=<instant>: the
// api answers what it served then. The revisions and the status refuse as_of (the revisions
// are a history already: those first seen after the instant are left out here; the status
// is the data held now).
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const api = document.body.dataset;

  // What the page asks of each series (the api's field names), and what each chart draws.
  const FIELDS = {
    daily: ["date", "positiveIncrease", "deathIncrease", "totalTestResultsIncrease",
      "hospitalizedCurrently"],
    derived: ["date", "positiveIncreaseAvg7d", "deathIncreaseAvg7d",
      "totalTestResultsIncreaseAvg7d", "testPositivity", "testPositivity7d"],
  };
  const CHARTS = [
    { id: "cases", title: "New cases", short: "Cases a day", noun: "new cases",
      bars: ["daily", "positiveIncrease"], line: ["derived", "positiveIncreaseAvg7d"],
      revised: "positiveIncrease" },
    { id: "deaths", title: "New deaths", short: "Deaths a day", noun: "deaths",
      bars: ["daily", "deathIncrease"], line: ["derived", "deathIncreaseAvg7d"],
      revised: "deathIncrease" },
    { id: "tests", title: "New test results", short: "Tests a day", noun: "test results",
      bars: ["daily", "totalTestResultsIncrease"],
      line: ["derived", "totalTestResultsIncreaseAvg7d"], revised: "totalTestResultsIncrease" },
    { id: "hospitalized", title: "Currently hospitalized", short: "In hospital",
      noun: "people in hospital",
      line: ["daily", "hospitalizedCurrently"], area: true, revised: "hospitalizedCurrently" },
    { id: "positivity", title: "Test positivity", short: "Tests positive",
      noun: "of tests positive",
      bars: ["derived", "testPositivity"], line: ["derived", "testPositivity7d"], percent: true,
      scaleBy: ["derived", "totalTestResultsIncreaseAvg7d"] },
  ];
  const TABLE = [
    ["New cases", "daily", "positiveIncrease"],
    ["Cases, 7-day avg.", "derived", "positiveIncreaseAvg7d"],
    ["New deaths", "daily", "deathIncrease"],
    ["Deaths, 7-day avg.", "derived", "deathIncreaseAvg7d"],
    ["New tests", "daily", "totalTestResultsIncrease"],
    ["Tests, 7-day avg.", "derived", "totalTestResultsIncreaseAvg7d"],
    ["Hospitalized", "daily", "hospitalizedCurrently"],
    ["Positivity", "derived", "testPositivity", true],
    ["Positivity, 7-day", "derived", "testPositivity7d", true],
  ];

  const $ = (id) => document.getElementById(id);
  const count = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const small = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });
  const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
  const percent = new Intl.NumberFormat("en-US", { style: "percent", maximumFractionDigits: 1 });
  const longDate = new Intl.DateTimeFormat("en-US",
    { timeZone: "UTC", weekday: "short", month: "short", day: "numeric", year: "numeric" });
  const shortDate = new Intl.DateTimeFormat("en-US",
    { timeZone: "UTC", month: "short", day: "numeric", year: "numeric" });
  const monthName = new Intl.DateTimeFormat("en-US", { timeZone: "UTC", month: "short" });
  const exact = new Intl.NumberFormat("en-US", { maximumFractionDigits: 6 });
  // An instant in UTC, to the second: 2020-12-01 00:00:00 UTC.
  const utcText = (d) => `${d.toISOString().slice(0, 19).replace("T", " ")} UTC`;
  const DAY = 86400000;

  let states = new Map(); // "ca" -> "California"
  let shown = null; // { view, rows, revised } of the charts on screen
  let generation = 0; // the latest load: an older one's answer is dropped

  // -- the view: place and dates, read from and written to the URL ---------------------------

  function isDate(text) {
    if (!/^\d{4}-\d{2}-\d{2}$/.test(text)) return false;
    const d = new Date(text + "T00:00:00Z");
    return !Number.isNaN(d.getTime()) && d.toISOString().slice(0, 10) === text;
  }

  // An ISO 8601 instant with its UTC offset, as the api takes it: 2020-12-01T00:00:00Z.
  function isInstant(text) {
    const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,6})?)?(?:Z|[+-](\d{2}):(\d{2}))$/
      .exec(text);
    return Boolean(m) && isDate(m[1]) && +m[2] < 24 && +m[3] < 60 && +(m[4] || 0) < 60
      && +(m[5] || 0) < 24 && +(m[6] || 0) < 60;
  }

  // The instant as a datetime-local input's value, in UTC (seconds: the input's step is 1).
  function utcInput(instant) {
    const d = new Date(instant);
    return Number.isNaN(d.getTime()) ? "" : d.toISOString().slice(0, 19);
  }

  // Adds as_of to a query when the view has one.
  function withAsOf(query, view) {
    if (view.asOf) query.set("as_of", view.asOf);
    return query;
  }

  function readUrl() {
    const query = new URLSearchParams(location.search);
    const view = { state: "", from: "", to: "", days: "", asOf: "" };
    const notices = [];
    const place = query.get("state");
    if (place && place.toLowerCase() !== "us") {
      if (/^[A-Za-z]{2}$/.test(place)) view.state = place.toLowerCase();
      else notices.push(`Unknown place “${place}”: showing the United States.`);
    }
    for (const key of ["from", "to"]) {
      const value = query.get(key);
      if (!value) continue;
      if (isDate(value)) view[key] = value;
      else notices.push(`Ignored ${key}=“${value}”: not a date (YYYY-MM-DD).`);
    }
    const days = query.get("days");
    if (days) {
      if (/^[1-9]\d{0,3}$/.test(days)) view.days = days;
      else notices.push(`Ignored days=“${days}”: not a number of days.`);
    }
    const asOf = query.get("as_of");
    if (asOf) {
      if (isInstant(asOf)) view.asOf = asOf;
      else notices.push(`Ignored as_of=“${asOf}”: not an instant (YYYY-MM-DDThh:mm:ssZ).`);
    }
    if (view.from && view.to && view.from > view.to) {
      notices.push("“From” is after “To”: showing every date.");
      view.from = view.to = "";
    }
    return { view, notices };
  }

  function pageUrl(view) {
    const query = new URLSearchParams();
    for (const key of ["state", "from", "to", "days"]) if (view[key]) query.set(key, view[key]);
    withAsOf(query, view);
    const text = query.toString();
    return location.pathname + (text ? "?" + text : "");
  }

  function seriesUrl(kind, fmt, view) {
    const template = view.state ? api[kind === "daily" ? "stateDaily" : "stateDerived"]
      : api[kind === "daily" ? "usDaily" : "usDerived"];
    const path = template.replace("{state}", encodeURIComponent(view.state))
      .replace("{fmt}", fmt);
    const query = new URLSearchParams({ fields: FIELDS[kind].join(",") });
    if (view.from) query.set("from", view.from);
    if (view.to) query.set("to", view.to);
    if (view.days) query.set("lastdays", view.days);
    return path + "?" + withAsOf(query, view).toString();
  }

  // The revisions of one field of the view's place, for the dates shown (never as_of).
  function revisionsUrl(view, field, first, last) {
    const path = view.state ? api.stateRevisions.replace("{state}", encodeURIComponent(view.state))
      : api.usRevisions;
    const query = new URLSearchParams({ field, from: String(first), to: String(last) });
    return path + "?" + query.toString();
  }

  function placeName(state) {
    if (!state) return "the United States";
    return states.get(state) || state.toUpperCase();
  }

  // -- loading ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function getJson(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`, code = "";
      try {
        const body = await response.json();
        if (body && body.error && typeof body.error.message === "string") {
          message = body.error.message;
          code = String(body.error.code);
        }
      } catch (_) { /* not the api's error shape */ }
      throw new ApiError(response.status, message, code);
    }
    return response.json();
  }

  function notice(text) {
    const p = document.createElement("p");
    p.textContent = text;
    $("notices").append(p);
  }

  async function show(view) {
    const mine = ++generation;
    $("main").setAttribute("aria-busy", "true");
    try {
      const [daily, derived] = await Promise.all([
        getJson(seriesUrl("daily", "json", view)),
        getJson(seriesUrl("derived", "json", view)),
      ]);
      if (mine !== generation) return;
      render(view, Array.isArray(daily) ? daily : [], Array.isArray(derived) ? derived : []);
      await showRevisions(mine);
    } catch (error) {
      if (mine !== generation) return;
      if (error instanceof ApiError && error.code === "unknown_state" && view.state) {
        notice(`No data for “${view.state.toUpperCase()}”: showing the United States.`);
        const us = { ...view, state: "" };
        history.replaceState(null, "", pageUrl(us));
        syncControls(us);
        show(us);
        return;
      }
      notice(`Could not load the data: ${error.message}`);
    } finally {
      if (mine === generation) $("main").setAttribute("aria-busy", "false");
    }
  }

  // The revised values of the view's daily series: one request per field the charts show,
  // for the dates on screen; then the marks, the summary line and the list.
  async function showRevisions(mine) {
    const { view, rows } = shown;
    const asOf = view.asOf ? Date.parse(view.asOf) : Infinity; // what was known then
    const fields = CHARTS.filter((spec) => spec.revised).map((spec) => spec.revised);
    const revised = new Map(fields.map((f) => [f, new Map()])); // field -> date -> [revision]
    if (rows.length) {
      const first = rows[0].date, last = rows[rows.length - 1].date;
      const dates = new Set(rows.map((r) => r.date));
      let answers;
      try {
        answers = await Promise.all(fields.map((f) => getJson(revisionsUrl(view, f, first, last))));
      } catch (error) {
        if (mine === generation) notice(`Could not load the revisions: ${error.message}`);
        return;
      }
      if (mine !== generation) return;
      answers.forEach((list, i) => {
        for (const r of Array.isArray(list) ? list : []) {
          if (!r || r.field !== fields[i] || !dates.has(r.date)) continue;
          if (!(Date.parse(r.firstSeen) <= asOf)) continue;
          const byDate = revised.get(fields[i]);
          if (!byDate.has(r.date)) byDate.set(r.date, []);
          byDate.get(r.date).push(r);
        }
      });
    }
    shown.revised = revised;
    drawAll();
    listRevisions(revised);
  }

  function shownValue(v) {
    if (v === null || v === undefined) return "no value";
    return typeof v === "number" ? exact.format(v) : String(v);
  }

  function whenSeen(r) {
    const d = new Date(r.firstSeen);
    return Number.isNaN(d.getTime()) ? String(r.firstSeen) : utcText(d);
  }

  // "new cases on Mar 2, 2020 revised: 0 → 5 (first seen 2026-12-05 04:12:03 UTC)".
  function revisionText(spec, date, list) {
    const changes = [...list].reverse()
      .map((r) => `${shownValue(r.old)} → ${shownValue(r.new)} (first seen ${whenSeen(r)})`);
    return `${spec.noun} on ${shortDate.format(dayOf(date) * DAY)} revised: ${changes.join(", then ")}`;
  }

  function listRevisions(revised) {
    const box = $("revised"), list = $("revised-list");
    const items = [], parts = [];
    for (const spec of CHARTS.filter((c) => c.revised)) {
      const byDate = revised.get(spec.revised);
      if (byDate.size) parts.push(`${spec.noun} ${count.format(byDate.size)}`);
      for (const [date, rs] of [...byDate.entries()].sort((a, b) => b[0] - a[0])) {
        const li = document.createElement("li");
        li.textContent = revisionText(spec, date, rs);
        items.push(li);
      }
    }
    list.replaceChildren(...items);
    const total = items.length;
    $("revised-summary").textContent = total
      ? `${count.format(total)} ${total === 1 ? "value" : "values"} of this view revised since `
        + `first published (${parts.join(", ")}), each marked ◆ on its chart: `
        + "from what, to what, and when"
      : "";
    box.hidden = !total;
  }

  async function loadStates() {
    try {
      const query = withAsOf(new URLSearchParams({ fields: "state,name" }), currentView());
      const list = await getJson(api.states + "?" + query.toString());
      const select = $("state");
      for (const record of Array.isArray(list) ? list : []) {
        const code = typeof record.state === "string" ? record.state : "";
        if (!/^[A-Z]{2}$/.test(code)) continue;
        const name = typeof record.name === "string" ? record.name : code;
        states.set(code.toLowerCase(), name);
        const option = document.createElement("option");
        option.value = code.toLowerCase();
        option.textContent = `${name} (${code})`;
        select.append(option);
      }
      syncControls(currentView());
      if (shown) title(shown.view, shown.rows);
    } catch (error) {
      notice(`Could not load the list of places: ${error.message}`);
    }
  }

  async function loadStatus() {
    try {
      const status = await getJson(api.status);
      const built = new Date(status.buildTime);
      $("fetched").textContent = Number.isNaN(built.getTime())
        ? String(status.buildTime)
        : built.toLocaleString("en-US", { dateStyle: "medium", timeStyle: "short" });
    } catch (error) {
      $("fetched").textContent = `unknown (${error.message})`;
    }
  }

  // -- rendering -------------------------------------------------------------------------

  function dayOf(date) { // 20200901 -> days since the epoch
    return Date.UTC(Math.floor(date / 10000), Math.floor(date / 100) % 100 - 1, date % 100) / DAY;
  }

  function value(row, [series, field]) {
    const record = row[series];
    const v = record ? record[field] : undefined;
    return typeof v === "number" && Number.isFinite(v) ? v : null;
  }

  function rowsOf(daily, derived) {
    const byDate = new Map();
    const add = (kind, records) => {
      for (const record of records) {
        if (!record || !Number.isInteger(record.date)) continue;
        const row = byDate.get(record.date) || { date: record.date, day: dayOf(record.date) };
        row[kind] = record;
        byDate.set(record.date, row);
      }
    };
    add("daily", daily);
    add("derived", derived);
    return [...byDate.values()].sort((a, b) => a.day - b.day);
  }

  function title(view, rows) {
    const name = placeName(view.state);
    const heading = `COVID-19 in ${name}`;
    $("title").textContent = heading;
    document.title = `${heading}: covid-stats`;
    $("table-caption").textContent = `Daily values for ${name}, newest first`;
    if (rows.length) {
      const first = shortDate.format(rows[0].day * DAY);
      const last = shortDate.format(rows[rows.length - 1].day * DAY);
      $("lede").textContent = `Daily figures from ${first} to ${last} (${rows.length} days), `
        + "with their 7-day averages.";
    } else {
      $("lede").textContent = "No data for these dates.";
    }
    if (view.asOf) {
      $("lede").textContent += ` As published at ${utcText(new Date(view.asOf))}.`;
    }
  }

  function render(view, daily, derived) {
    const rows = rowsOf(daily, derived);
    shown = { view, rows, revised: null };
    $("revised").hidden = true;
    title(view, rows);
    $("newest").textContent = rows.length ? shortDate.format(rows[rows.length - 1].day * DAY) : "none";
    const links = {
      "daily-json": seriesUrl("daily", "json", view),
      "daily-csv": seriesUrl("daily", "csv", view),
      "derived-json": seriesUrl("derived", "json", view),
      "derived-csv": seriesUrl("derived", "csv", view),
    };
    for (const [id, url] of Object.entries(links)) $(id).setAttribute("href", url);
    const box = $("charts");
    box.replaceChildren(summary(rows), ...CHARTS.map(figure));
    drawAll();
    table(rows);
    if (!view.from && !view.to && !view.days && rows.length) {
      const first = isoDate(rows[0].day), last = isoDate(rows[rows.length - 1].day);
      for (const id of ["from", "to"]) {
        $(id).min = first;
        $(id).max = last;
      }
    }
  }

  function isoDate(day) {
    return new Date(day * DAY).toISOString().slice(0, 10);
  }

  // The newest date's figures, and how they compare with a week before.
  function summary(rows) {
    const card = document.createElement("section");
    card.className = "summary";
    card.setAttribute("aria-labelledby", "summary-title");
    const h2 = document.createElement("h2");
    h2.id = "summary-title";
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = "7-day averages (people in hospital: on that day), "
      + "and how they changed in a week.";
    const list = document.createElement("dl");
    card.append(h2, note, list);
    if (!rows.length) {
      h2.textContent = "No data for these dates";
      return card;
    }
    const last = rows[rows.length - 1];
    const before = rows.find((r) => r.day === last.day - 7);
    h2.textContent = `As of ${longDate.format(last.day * DAY)}`;
    for (const spec of CHARTS) {
      const now = value(last, spec.line);
      const then = before ? value(before, spec.line) : null;
      const item = document.createElement("div");
      item.className = `figure chart-${spec.id}`;
      const dt = document.createElement("dt");
      dt.textContent = spec.short;
      const dd = document.createElement("dd");
      const number = document.createElement("span");
      number.className = "number";
      number.textContent = now === null ? "–" : formatValue(spec, now);
      dd.append(number);
      if (now !== null && then !== null && then !== 0) {
        const change = (now - then) / Math.abs(then);
        const trend = document.createElement("span");
        trend.className = "trend";
        trend.textContent = Math.abs(change) < 0.005 ? "unchanged"
          : `${change > 0 ? "▲ up" : "▼ down"} ${percent.format(Math.abs(change))}`;
        dd.append(trend);
      }
      item.append(dt, dd);
      list.append(item);
    }
    return card;
  }

  function figure(spec) {
    const fig = document.createElement("figure");
    fig.className = `chart chart-${spec.id}`;
    fig.id = `chart-${spec.id}`;
    const caption = document.createElement("figcaption");
    const h2 = document.createElement("h2");
    h2.id = `${spec.id}-title`;
    h2.textContent = spec.title;
    const readout = document.createElement("p");
    readout.className = "readout";
    readout.id = `${spec.id}-readout`;
    caption.append(h2, readout);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("role", "img");
    svg.setAttribute("tabindex", "0");
    svg.setAttribute("aria-labelledby", `${spec.id}-title ${spec.id}-readout`);
    const legend = document.createElement("p");
    legend.className = "legend";
    legend.setAttribute("aria-hidden", "true");
    const key = (kind, text) => {
      const span = document.createElement("span");
      span.className = `key key-${kind}`;
      legend.append(span, document.createTextNode(text));
    };
    if (spec.bars) key("bar", "daily");
    key(spec.area ? "area" : "line", spec.bars ? "7-day average" : spec.noun);
    fig.append(caption, svg, legend);
    fig.spec = spec;
    return fig;
  }

  function drawAll() {
    if (!shown) return;
    for (const fig of $("charts").querySelectorAll(".chart")) draw(fig, fig.spec, shown.rows);
  }

  function niceStep(span, ticks) {
    const raw = span / ticks;
    const power = 10 ** Math.floor(Math.log10(raw));
    const unit = raw / power;
    return power * (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 2.5 ? 2.5 : unit <= 5 ? 5 : 10);
  }

  function el(name, attributes, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [key, v] of Object.entries(attributes)) node.setAttribute(key, String(v));
    if (parent) parent.append(node);
    return node;
  }

  function formatValue(spec, v) {
    if (spec.percent) return percent.format(v);
    return (Math.abs(v) < 10 ? small : count).format(v); // an average of 0.4 is not 0
  }

  function draw(fig, spec, rows) {
    const svg = fig.querySelector("svg");
    svg.replaceChildren();
    const width = Math.max(240, Math.floor(svg.parentNode.clientWidth));
    const height = width < 480 ? 170 : 210;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    const m = { left: 48, right: 12, top: 10, bottom: 24 };
    const plotW = width - m.left - m.right, plotH = height - m.top - m.bottom;
    const readout = fig.querySelector(".readout");

    const bars = spec.bars ? rows.map((r, i) => [i, value(r, spec.bars)]).filter((b) => b[1] !== null) : [];
    const line = rows.map((r) => value(r, spec.line));
    const values = bars.map((b) => b[1]).concat(line.filter((v) => v !== null));
    if (!rows.length || !values.length) {
      readout.textContent = "No data for these dates.";
      el("text", { x: width / 2, y: height / 2, class: "empty", "text-anchor": "middle" }, svg)
        .textContent = "No data";
      return;
    }
    let lo = Math.min(0, ...values), hi = Math.max(...values);
    if (spec.scaleBy) {
      // A ratio of a few tests swings to 100%: the scale follows the average of the days
      // with at least a tenth of the range's most tests, and a higher value reaches the top
      // (the readout and the table say how high).
      const weights = rows.map((r) => value(r, spec.scaleBy) || 0);
      const most = Math.max(...weights);
      const telling = line.filter((v, i) => v !== null && weights[i] >= most / 10);
      lo = 0;
      hi = Math.min(1, Math.max(0.01, 1.3 * Math.max(0, ...telling)));
    }
    if (hi <= lo) hi = lo + 1;
    const step = niceStep(hi - lo, 4);
    lo = Math.floor(lo / step) * step;
    hi = Math.ceil(hi / step) * step;
    const first = rows[0].day, span = rows[rows.length - 1].day - first + 1;
    const x = (day) => m.left + ((day - first + 0.5) / span) * plotW;
    const clamp = (v) => Math.min(hi, Math.max(lo, v));
    const y = (v) => m.top + ((hi - clamp(v)) / (hi - lo)) * plotH;

    const grid = el("g", { class: "grid" }, svg);
    for (let t = lo; t <= hi + step / 2; t += step) {
      const ty = Math.round(y(t)) + 0.5;
      el("line", { x1: m.left, x2: width - m.right, y1: ty, y2: ty, class: t === 0 ? "zero" : "" }, grid);
      el("text", { x: m.left - 6, y: ty + 4, "text-anchor": "end" }, grid).textContent =
        spec.percent ? percent.format(t) : compact.format(t);
    }
    // x axis: the first of each month (or of every other month when they would crowd)
    const months = [];
    for (const row of rows) {
      const d = new Date(row.day * DAY);
      if (d.getUTCDate() === 1) months.push(row.day);
    }
    const every = Math.max(1, Math.ceil((months.length * 44) / plotW));
    months.forEach((day, i) => {
      if (i % every) return;
      const tx = Math.round(x(day)) + 0.5;
      el("line", { x1: tx, x2: tx, y1: height - m.bottom, y2: height - m.bottom + 4, class: "tick" }, grid);
      el("text", { x: tx, y: height - 6, "text-anchor": "middle" }, grid).textContent =
        monthName.format(day * DAY);
    });
    if (!months.length) {
      for (const day of [first, rows[rows.length - 1].day]) {
        el("text", { x: x(day), y: height - 6, "text-anchor": day === first ? "start" : "end" }, grid)
          .textContent = shortDate.format(day * DAY).replace(/, \d{4}$/, "");
      }
    }

    const barWidth = Math.max(1, (plotW / span) * 0.72);
    const barGroup = el("g", { class: "bars" }, svg);
    const zero = y(0);
    for (const [i, v] of bars) {
      const cx = x(rows[i].day), top = Math.min(y(v), zero);
      el("rect", {
        class: "bar",
        x: (cx - barWidth / 2).toFixed(1),
        y: top.toFixed(1),
        width: barWidth.toFixed(1),
        height: Math.max(0.5, Math.abs(y(v) - zero)).toFixed(1),
      }, barGroup);
    }
    let d = "", area = "", open = false, start = 0, last = 0;
    line.forEach((v, i) => {
      if (v === null) {
        if (open && spec.area) area += `L${last},${zero.toFixed(1)}L${start},${zero.toFixed(1)}Z`;
        open = false;
        return;
      }
      const px = x(rows[i].day).toFixed(1), py = y(v).toFixed(1);
      if (!open) start = px;
      d += `${open ? "L" : "M"}${px},${py}`;
      area += `${open ? "L" : "M"}${px},${py}`;
      last = px;
      open = true;
    });
    if (open && spec.area) area += `L${last},${zero.toFixed(1)}L${start},${zero.toFixed(1)}Z`;
    if (spec.area && area) el("path", { class: "area", d: area }, svg);
    el("path", { class: "line", d }, svg);

    // Revised values: a diamond at the value drawn, with its story as the mark's title.
    const revised = shown.revised && spec.revised ? shown.revised.get(spec.revised) : null;
    if (revised && revised.size) {
      const marks = el("g", { class: "revisions" }, svg);
      rows.forEach((row) => {
        const rs = revised.get(row.date);
        if (!rs) return;
        const v = value(row, spec.bars || spec.line);
        const cx = x(row.day), cy = v === null ? zero : y(v);
        const mark = el("path", {
          class: "revised",
          d: `M${cx.toFixed(1)},${(cy - 5).toFixed(1)}l4,4l-4,4l-4,-4z`,
          "data-date": row.date,
        }, marks);
        el("title", {}, mark).textContent = revisionText(spec, row.date, rs);
      });
    }

    const cursor = el("g", { class: "cursor" }, svg);
    const rule = el("line", { y1: m.top, y2: height - m.bottom }, cursor);
    const dot = el("circle", { r: 3.5 }, cursor);
    const describe = (i) => {
      const row = rows[i];
      const parts = [longDate.format(row.day * DAY)];
      const b = spec.bars ? value(row, spec.bars) : null;
      const l = value(row, spec.line);
      if (spec.bars) parts.push(b === null ? "no daily figure" : `${formatValue(spec, b)} ${spec.noun}`);
      if (spec.bars) parts.push(l === null ? "no 7-day average" : `7-day average ${formatValue(spec, l)}`);
      else parts.push(l === null ? "no figure" : `${formatValue(spec, l)} ${spec.noun}`);
      const rs = revised ? revised.get(row.date) : null;
      if (rs) parts.push(`◆ revised: first ${shownValue(rs[rs.length - 1].old)}`);
      return parts.join(" · ");
    };
    let at = rows.length - 1;
    const point = (i) => {
      at = Math.min(rows.length - 1, Math.max(0, i));
      const cx = x(rows[at].day).toFixed(1);
      rule.setAttribute("x1", cx);
      rule.setAttribute("x2", cx);
      const l = value(rows[at], spec.line);
      dot.setAttribute("cx", cx);
      dot.setAttribute("cy", (l === null ? zero : y(l)).toFixed(1));
      dot.setAttribute("visibility", l === null ? "hidden" : "visible");
      readout.textContent = describe(at);
    };
    point(at);
    svg.onpointermove = (event) => {
      const box = svg.getBoundingClientRect();
      const day = first - 0.5 + ((event.clientX - box.left - m.left) / plotW) * span;
      let best = 0;
      for (let i = 0; i < rows.length; i++) {
        if (Math.abs(rows[i].day - day) < Math.abs(rows[best].day - day)) best = i;
      }
      point(best);
    };
    svg.onpointerleave = () => point(rows.length - 1);
    svg.onkeydown = (event) => {
      const moves = { ArrowLeft: -1, ArrowRight: 1, PageUp: -7, PageDown: 7 };
      if (event.key in moves) point(at + moves[event.key]);
      else if (event.key === "Home") point(0);
      else if (event.key === "End") point(rows.length - 1);
      else return;
      event.preventDefault();
    };
  }

  function table(rows) {
    const tableEl = $("table");
    const caption = $("table-caption"); // its text: title()
    const head = document.createElement("thead");
    const headRow = document.createElement("tr");
    for (const text of ["Date", ...TABLE.map((c) => c[0])]) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = text;
      headRow.append(th);
    }
    head.append(headRow);
    const body = document.createElement("tbody");
    for (let i = rows.length - 1; i >= 0; i--) {
      const row = rows[i];
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = isoDate(row.day);
      tr.append(th);
      for (const [, series, field, isPercent] of TABLE) {
        const td = document.createElement("td");
        const v = value(row, [series, field]);
        td.textContent = v === null ? "–"
          : isPercent ? percent.format(v) : (Math.abs(v) < 10 ? small : count).format(v);
        tr.append(td);
      }
      body.append(tr);
    }
    tableEl.replaceChildren(caption, head, body);
  }

  // -- controls ---------------------------------------------------------------------------

  function currentView() {
    return shown ? shown.view : readUrl().view;
  }

  function syncControls(view) {
    const select = $("state");
    select.value = states.has(view.state) || !view.state ? view.state : select.value;
    $("from").value = view.from;
    $("to").value = view.to;
    $("as-of").value = view.asOf ? utcInput(view.asOf) : "";
    for (const button of document.querySelectorAll(".presets button")) {
      const pressed = button.dataset.days === view.days && !view.from && !view.to;
      button.setAttribute("aria-pressed", String(pressed));
    }
  }

  function go(view) {
    history.pushState(null, "", pageUrl(view));
    $("notices").replaceChildren();
    syncControls(view);
    show(view);
  }

  function fromControls() {
    const view = { ...currentView() };
    view.state = $("state").value;
    const from = $("from").value, to = $("to").value;
    view.from = isDate(from) ? from : "";
    view.to = isDate(to) ? to : "";
    if (view.from && view.to && view.from > view.to) [view.from, view.to] = [view.to, view.from];
    if (view.from || view.to) view.days = "";
    // The input holds UTC to the second (hh:mm when the seconds are 0); the instant of the
    // URL is kept, as written, while the input shows it.
    const asOf = $("as-of").value;
    const text = asOf ? (asOf.length === 16 ? asOf + ":00" : asOf.slice(0, 19)) + "Z" : "";
    const second = (t) => Math.floor(Date.parse(t) / 1000);
    if (!isInstant(text)) view.asOf = "";
    else if (!view.asOf || second(view.asOf) !== second(text)) view.asOf = text;
    return view;
  }

  function start() {
    const { view, notices } = readUrl();
    notices.forEach(notice);
    syncControls(view);
    history.replaceState(null, "", pageUrl(view));
    $("state").addEventListener("change", () => go(fromControls()));
    $("from").addEventListener("change", () => go(fromControls()));
    $("to").addEventListener("change", () => go(fromControls()));
    $("as-of").addEventListener("change", () => go(fromControls()));
    $("as-of-latest").addEventListener("click", () => go({ ...fromControls(), asOf: "" }));
    $("controls").addEventListener("submit", (event) => {
      event.preventDefault();
      go(fromControls());
    });
    for (const button of document.querySelectorAll(".presets button")) {
      button.addEventListener("click", () => {
        go({ ...fromControls(), from: "", to: "", days: button.dataset.days });
      });
    }
    window.addEventListener("popstate", () => {
      const next = readUrl();
      syncControls(next.view);
      show(next.view);
    });
    let pending = false;
    window.addEventListener("resize", () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        drawAll();
      });
    });
    loadStates();
    loadStatus();
    show(view);
  }

  start();
})();
