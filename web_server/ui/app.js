// Harvester's dashboard: plain ES module, no build step. The API is one level up from /ui/.
const api = (path) => new URL("../" + path.replace(/^\//, ""), location.href).toString();
const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const streams = new Map();   // job id -> event stream (watch) of a running job in the list
let current = null;          // { id, source } of the job view

// An API token, when the server wants one: asked for on a 401, kept for this tab only
// (sessionStorage), sent as Authorization: Bearer, never in a URL.
const TOKEN = "harvester.token";
function authHeaders() {
  const token = sessionStorage.getItem(TOKEN);
  return token ? { Authorization: `Bearer ${token}` } : {};
}
function askToken() {
  $("token-form").hidden = false;
  $("token-input").focus();
}

async function call(method, path, body, type) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) { init.body = body; init.headers["Content-Type"] = type; }
  const r = await fetch(api(path), init);
  if (r.status === 401) askToken();
  const text = await r.text();
  let data = text;
  try { data = JSON.parse(text); } catch { /* not JSON */ }
  if (!r.ok) throw new Error(data && data.message ? `${data.code}: ${data.message}` : `HTTP ${r.status}`);
  return data;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function shownState(state, done) {
  return state === "running" && done ? "completed" : state;
}

function fraction(pages) {
  const total = pages.processed + pages.queued;
  return total ? pages.processed / total : 0;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 60) return `${Math.round(seconds)}s`;
  const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
  return m < 60 ? `${m}m${s}s` : `${Math.floor(m / 60)}h${m % 60}m`;
}

// Jobs list: GET /jobs, plus one EventSource per running job shown.
function row(job) {
  const state = shownState(job.state, job.completed);
  const id = job.id;
  const tr = el("tr", { "data-testid": `job-row-${id}`, "data-state": state });
  const open = el("a", { href: `#job-${id}`, "data-testid": `job-open-${id}`, text: `#${id}` });
  open.addEventListener("click", (ev) => { ev.preventDefault(); openJob(id); });
  const bar = el("progress", { max: "1", value: String(fraction(job.pages)), "data-testid": `job-progress-${id}` });
  tr.append(el("td", {}, open), el("td", { text: job.createdOn.replace("T", " ").slice(0, 19) }),
    el("td", { class: `state-${state}`, "data-testid": `job-state-${id}`, text: state }), el("td", {}, bar),
    el("td", { "data-testid": `job-processed-${id}`, text: String(job.pages.processed) }),
    el("td", { "data-testid": `job-queued-${id}`, text: String(job.pages.queued) }),
    el("td", { "data-testid": `job-failed-${id}`, text: String(job.pages.failed) }));
  if (current && current.id === id) tr.classList.add("selected");
  return tr;
}

function updateRow(id, status) {
  const tr = $(`job-row-${id}`);
  if (!tr) return;
  const state = shownState(status.state, status.pending === 0);
  tr.dataset.state = state;
  const cell = $(`job-state-${id}`);
  cell.textContent = state; cell.className = `state-${state}`;
  $(`job-progress-${id}`).value = status.pending === 0 ? 1 : fraction(status.pages);
  $(`job-processed-${id}`).textContent = String(status.pages.processed);
  $(`job-queued-${id}`).textContent = String(status.pages.queued);
  $(`job-failed-${id}`).textContent = String(status.pages.failed);
}

// A job's server-sent events, read with fetch (EventSource cannot send a token): status on
// every change, completed last; reconnects after an interruption (not after a 4xx) until closed.
function watch(id, onStatus, onDone) {
  const abort = new AbortController();
  const source = { closed: false, close() { this.closed = true; abort.abort(); } };
  const dispatch = (block) => {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (!data.length) return false;
    const payload = JSON.parse(data.join("\n"));
    if (event === "status") onStatus(payload);
    if (event !== "completed") return false;
    source.close();
    onDone(payload);
    return true;
  };
  (async () => {
    while (!source.closed) {
      try {
        const r = await fetch(api(`status/${id}/events`), { headers: authHeaders(), signal: abort.signal });
        if (r.status === 401) { askToken(); source.close(); return; }
        if (!r.ok) {
          // A 4xx (a purged job, another token's) stays so: stop; retry only what may pass.
          if (r.status < 500 && r.status !== 408 && r.status !== 429) { source.close(); return; }
          throw new Error(`HTTP ${r.status}`);
        }
        $("connection").textContent = "";
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n/g, "\n");
          let end;
          while ((end = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, end);
            buf = buf.slice(end + 2);
            if (dispatch(block)) return;
          }
        }
      } catch (e) {
        if (source.closed) return;
      }
      if (source.closed) return;
      $("connection").textContent = "live updates interrupted; retrying";
      await new Promise((resolve) => setTimeout(resolve, 3000));
    }
  })();
  return source;
}

async function loadJobs() {
  let data;
  try { data = await call("GET", "jobs"); } catch (e) { $("connection").textContent = String(e.message); return; }
  const body = $("jobs-list");
  body.replaceChildren(...data.jobs.map(row));
  const shown = new Set(data.jobs.map((j) => j.id));
  for (const [id, source] of streams) {
    if (!shown.has(id)) { source.close(); streams.delete(id); }
  }
  for (const job of data.jobs) {
    if (job.completed || job.state === "cancelled" || streams.has(job.id)) continue;
    const id = job.id;
    streams.set(id, watch(id, (st) => updateRow(id, st), (st) => {
      streams.delete(id);
      if (st.pages) updateRow(id, st);
      if (current && current.id === id) loadJob(id);
    }));
  }
}

// Job view: counters, ETA, hosts, failures, the results tree with the MIME filter, controls.
function showStatus(id, st) {
  if (!current || current.id !== id) return;
  const state = shownState(st.state, st.pending === 0);
  $("job-state").textContent = state;
  $("job-view").dataset.state = state;
  const counters = { ...st.pages, "URLs completed": st.completed, "URLs pending": st.pending,
    "live workers": st.fetcher.liveWorkers };
  $("counters").replaceChildren(...Object.entries(counters).map(([k, v]) =>
    el("div", {}, el("dt", { text: k }), el("dd", { "data-testid": `counter-${k.replace(/ /g, "-")}`, text: String(v) }))));
  $("job-eta").textContent = st.pending === 0 ? "done" : duration(st.eta.seconds) +
    ` (${st.eta.remainingPages} pages left)`;
  $("job-rate").textContent = String(st.rates.pagesPerSecond);
  $("job-elapsed").textContent = st.elapsed;
  $("hosts").replaceChildren(...st.hosts.top.map((h) => el("tr", { "data-testid": "host-row" },
    el("td", { text: h.host }), el("td", { text: String(h.pending) }), el("td", { text: String(h.inFlight) }),
    el("td", { text: h.nextStart || "" }), el("td", { text: h.backoffUntil || "" }), el("td", { text: h.robots || "" }))));
  $("pause-button").disabled = state !== "running";
  $("resume-button").disabled = state !== "paused";
  $("cancel-button").disabled = state === "cancelled" || state === "completed";
  updateRow(id, st);
}

async function loadFailures(id) {
  const failures = await call("GET", `result/${id}?status=failed`);
  $("failures").replaceChildren(...Object.entries(failures).map(([url, f]) => el("tr", { "data-testid": "failure-row" },
    el("td", { text: url }), el("td", { text: f.status === null ? "" : String(f.status) }),
    el("td", { text: f.reason || "" }), el("td", { text: String(f.attempts ?? "") }))));
}

// The result as a tree: each page under the first page that links to it (breadth first from
// the job's URLs); links that are not pages of the result are leaves.
function tree(result, roots) {
  const linked = new Set(Object.values(result).flat());
  const linkedFrom = (_, url) => linked.has(url);
  const placed = new Set();
  const children = new Map();
  const queue = roots.filter((u) => u in result);
  for (const u of Object.keys(result)) if (!queue.includes(u) && !linkedFrom(result, u)) queue.push(u);
  for (const u of queue) placed.add(u);
  for (let i = 0; i < queue.length; i++) {
    const page = queue[i];
    const kids = [];
    for (const link of result[page]) {
      if (link in result && !placed.has(link)) { placed.add(link); queue.push(link); kids.push(link); }
      else if (!(link in result)) kids.push(link);
    }
    children.set(page, kids);
  }
  const render = (url) => {
    if (!(url in result)) return el("li", { class: "link", "data-testid": "tree-link", text: url });
    const kids = children.get(url) || [];
    const details = el("details", { "data-testid": "tree-node", "data-url": url },
      el("summary", { "data-testid": "tree-summary", text: `${url} (${result[url].length} links)` }),
      el("ul", {}, ...kids.map(render)));
    return el("li", {}, details);
  };
  return el("ul", {}, ...queue.filter((u) => roots.includes(u) || !linkedFrom(result, u)).map(render));
}


async function loadResults(id, roots) {
  const mime = $("mime-filter").value.trim();
  const result = await call("GET", `result/${id}` + (mime ? `?mime=${encodeURIComponent(mime)}` : ""));
  const pages = Object.keys(result).length;
  $("results-count").textContent = `${pages} pages`;
  $("results-tree").dataset.pages = String(pages);
  $("results-tree").replaceChildren(pages ? tree(result, roots) : el("p", { "data-testid": "tree-empty", text: "no pages" }));
}

async function loadJob(id) {
  const st = await call("GET", `status/${id}`);
  showStatus(id, st);
  await Promise.all([loadFailures(id), loadResults(id, Object.keys(st.urls))]);
  return st;
}

async function openJob(id) {
  if (current && current.source) current.source.close();
  current = { id, source: null, roots: [] };
  location.hash = `job-${id}`;
  $("job-view").hidden = false;
  $("job-id").textContent = String(id);
  $("control-message").textContent = "";
  for (const tr of document.querySelectorAll("tr.selected")) tr.classList.remove("selected");
  const tr = $(`job-row-${id}`); if (tr) tr.classList.add("selected");
  const st = await loadJob(id);
  current.roots = Object.keys(st.urls);
  if (st.pending > 0 && st.state !== "cancelled") {
    current.source = watch(id, (s) => showStatus(id, s), () => { if (current && current.id === id) loadJob(id); });
  }
}

async function control(method, suffix) {
  if (!current) return;
  const id = current.id;
  $("control-message").textContent = "";
  try {
    const answer = await call(method, `jobs/${id}${suffix}`);
    $("job-state").textContent = answer.state;
    $("job-view").dataset.state = answer.state;
    const st = await call("GET", `status/${id}`);
    showStatus(id, st);
    if (answer.state === "running" && (!current.source || current.source.closed)) {
      current.source = watch(id, (s) => showStatus(id, s), () => loadJob(id));
    }
    await loadJobs();
  } catch (e) {
    $("control-message").textContent = e.message;
  }
}

$("submit-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const params = new URLSearchParams({ depth: form.depth.value || "0" });
  if (form.force.checked) params.set("forceCrawl", "true");
  $("submit-message").textContent = "";
  try {
    const { jobId } = await call("POST", `?${params}`, form.urls.value, "text/plain");
    $("submit-message").textContent = `job ${jobId} scheduled`;
    $("submit-message").dataset.jobId = String(jobId);
    await loadJobs();
  } catch (e) {
    $("submit-message").textContent = e.message;
  }
});
$("mime-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (current) loadResults(current.id, current.roots);
});
$("jobs-refresh").addEventListener("click", loadJobs);
$("token-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN, $("token-input").value.trim());
  $("token-input").value = "";
  $("token-form").hidden = true;
  $("connection").textContent = "";
  await loadJobs();
  const m = /^#job-(\d+)$/.exec(location.hash);
  if (m) openJob(Number(m[1]));
});
$("pause-button").addEventListener("click", () => control("POST", "/pause"));
$("resume-button").addEventListener("click", () => control("POST", "/resume"));
$("cancel-button").addEventListener("click", () => control("DELETE", ""));

await loadJobs();
setInterval(loadJobs, 5000);
const m = /^#job-(\d+)$/.exec(location.hash);
if (m) openJob(Number(m[1]));
