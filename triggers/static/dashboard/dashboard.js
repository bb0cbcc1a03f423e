// geoetl jobs dashboard. Every value is written with textContent (never as markup); links only
// take http(s) URLs the API built. The write key lives in this page's memory and is sent as a header.
const api = document.body.dataset.api;
const POLL_MS = 1500;
const PAGE = 25;
const state = { offset: 0, selected: null, filters: {}, detail: null, busy: false };

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function headers(write) {
  const h = { Accept: 'application/json' };
  const key = $('write-key').value;
  if (key) h['x-functions-key'] = key;
  if (write) h['Content-Type'] = 'application/json';
  return h;
}

async function getJson(path) {
  const r = await fetch(api + path, { headers: headers(false) });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.message || `${r.status} ${r.statusText}`);
  return body;
}

function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

function seconds(a, b) {
  if (!a || !b) return '';
  const s = (new Date(b) - new Date(a)) / 1000;
  return Number.isFinite(s) ? `${s.toFixed(s < 10 ? 2 : 0)} s` : '';
}

function age(s) {
  if (s === null || s === undefined) return 'none waiting';
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function progressBar(counts) {
  const bar = el('progress');
  bar.max = Math.max(1, counts.total || 0);
  bar.value = counts.completed || 0;
  return bar;
}

function stageBars(stages) {
  const cell = el('td');
  for (const [stage, counts] of Object.entries(stages || {})) {
    const line = el('span', null, 'stage-bar');
    line.append(`stage ${stage} `, progressBar(counts), ` ${counts.completed || 0}/${counts.total || 0}`);
    if (counts.failed) line.append(el('span', ` ${counts.failed} failed`, 'status-failed'));
    cell.append(line);
  }
  return cell;
}

function filterQuery() {
  const q = new URLSearchParams({ limit: String(PAGE), offset: String(state.offset) });
  for (const [k, v] of Object.entries(state.filters)) if (v) q.set(k, v);
  return q.toString();
}

function localToIso(value) {
  if (!value) return '';
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString();
}

async function loadList() {
  const page = await getJson(`/dashboard/data/jobs?${filterQuery()}`);
  const select = $('f-type');
  if (select.options.length === 1) {
    for (const t of page.job_types) select.append(new Option(t, t));
  }
  $('job-total').textContent = `(${page.total}${page.total_capped ? '+' : ''})`;
  const rows = [];
  for (const job of page.jobs) {
    const tr = el('tr');
    tr.dataset.jobId = job.job_id;
    if (job.job_id === state.selected) tr.className = 'selected';
    tr.append(el('td', job.job_id.slice(0, 12), 'mono'), el('td', job.job_type),
      el('td', job.status, `status-${job.status}`), stageBars(job.stages), el('td', when(job.created_at)));
    tr.addEventListener('click', () => select_(job.job_id));
    rows.push(tr);
  }
  $('job-rows').replaceChildren(...rows);
  $('prev').disabled = state.offset === 0;
  $('next').disabled = state.offset + PAGE >= page.total;
}

async function loadQueues() {
  const q = await getJson('/dashboard/data/queues');
  $('queue-backend').textContent = `(${q.backend})`;
  const rows = Object.entries(q.queues).map(([name, s]) => {
    const tr = el('tr');
    tr.dataset.queue = name;
    tr.append(el('td', name), el('td', s.depth), el('td', s.scheduled), el('td', age(s.oldest_age_seconds)),
      el('td', s.dead_letters, s.dead_letters ? 'status-failed' : ''));
    return tr;
  });
  $('queue-rows').replaceChildren(...rows);
}

function safeHref(url) {
  return typeof url === 'string' && /^https?:\/\//.test(url) ? url : null;
}

function renderDetail(job) {
  state.detail = job;
  $('detail').hidden = false;
  $('d-id').textContent = job.job_id;
  $('d-type').textContent = job.job_type;
  $('d-status').textContent = job.status;
  $('d-status').className = `status-${job.status}`;
  $('d-stage').textContent = `${job.stage} of ${job.total_stages}${job.stage_name ? ` (${job.stage_name})` : ''}`;
  $('d-run').textContent = job.run;
  $('cancel').disabled = !['queued', 'processing'].includes(job.status);

  const links = [];
  for (const [name, url] of Object.entries(job.links || {})) {
    const href = safeHref(url);
    if (!href) continue;
    const a = el('a', { features: 'Features', viewer: 'Map viewer', stac_item: 'STAC item' }[name] || name);
    a.href = href;
    a.dataset.link = name;
    links.push(a);
  }
  $('d-links').replaceChildren(...links);

  const stages = [];
  const timings = job.stage_timings || {};
  const counts = (job.progress && job.progress.stages) || {};
  const numbers = new Set([...Object.keys(timings), ...Object.keys(counts)]);
  for (const stage of [...numbers].sort((a, b) => Number(a) - Number(b))) {
    const c = counts[stage] || { total: 0, completed: 0 };
    const t = timings[stage] || {};
    const tr = el('tr');
    tr.dataset.stage = stage;
    const bar = el('td');
    bar.append(progressBar(c));
    tr.append(el('td', stage), bar, el('td', `${c.completed || 0}/${c.total || 0}${c.failed ? `, ${c.failed} failed` : ''}`),
      el('td', when(t.started_at)), el('td', when(t.completed_at)), el('td', seconds(t.started_at, t.completed_at)));
    stages.push(tr);
  }
  $('d-stages').replaceChildren(...stages);

  const err = job.error_details;
  $('d-error').hidden = !err;
  if (err) {
    const fields = [];
    for (const k of ['error', 'stage', 'stage_name', 'task_id', 'task_type', 'attempts', 'phase', 'traceback_tail']) {
      if (err[k] === undefined || err[k] === null) continue;
      fields.push(el('dt', k), el('dd', err[k]));
    }
    $('d-error-fields').replaceChildren(...fields);
    $('d-failed').replaceChildren(...(job.failed_tasks || []).map((t) => {
      const tr = el('tr');
      tr.append(el('td', t.task_id), el('td', t.task_type), el('td', t.stage), el('td', t.attempts),
        el('td', t.error_details));
      return tr;
    }));
  }
  $('d-events').replaceChildren(...(job.events || []).map((e) => {
    const li = el('li', `${when(e.at)} · ${e.event}${e.stage ? ` (stage ${e.stage})` : ''}`);
    li.dataset.event = e.event;
    return li;
  }));
  $('d-params').textContent = JSON.stringify(job.parameters, null, 2);
}

async function loadDetail() {
  if (!state.selected) return;
  renderDetail(await getJson(`/dashboard/data/jobs/${encodeURIComponent(state.selected)}`));
}

async function select_(jobId) {
  state.selected = jobId;
  $('action-result').textContent = '';
  for (const tr of $('job-rows').children) tr.className = tr.dataset.jobId === jobId ? 'selected' : '';
  await refresh();
}

async function act(path, body) {
  const out = $('action-result');
  out.textContent = '…';
  try {
    const r = await fetch(api + path, { method: 'POST', headers: headers(true), body: JSON.stringify(body) });
    const answer = await r.json().catch(() => ({}));
    out.textContent = r.ok ? (answer.message || answer.status || 'done') : `refused (${r.status}): ${answer.message || ''}`;
    out.dataset.outcome = r.ok ? 'ok' : 'error';
  } catch (e) {
    out.textContent = `failed: ${e.message}`;
    out.dataset.outcome = 'error';
  }
  await refresh();
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    await Promise.all([loadList(), loadQueues(), loadDetail()]);
    $('status').textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.state = 'ready';
  } catch (e) {
    $('status').textContent = `could not refresh: ${e.message}`;
    document.body.dataset.state = 'error';
  } finally {
    state.busy = false;
  }
}

$('filters').addEventListener('submit', (ev) => {
  ev.preventDefault();
  state.filters = {
    job_type: $('f-type').value,
    status: $('f-status').value,
    since: localToIso($('f-since').value),
    until: localToIso($('f-until').value),
  };
  state.offset = 0;
  refresh();
});
$('prev').addEventListener('click', () => { state.offset = Math.max(0, state.offset - PAGE); refresh(); });
$('next').addEventListener('click', () => { state.offset += PAGE; refresh(); });
$('cancel').addEventListener('click', () => {
  if (state.detail) act(`/jobs/${encodeURIComponent(state.detail.job_id)}/cancel`, {});
});
$('resubmit').addEventListener('click', () => {
  if (state.detail) act(`/jobs/submit/${encodeURIComponent(state.detail.job_type)}`, state.detail.parameters);
});

refresh();
setInterval(refresh, POLL_MS);
