/* vramplan serve: the browser front-end. Plain ES2020, no framework, no network beyond this origin's /api.
 *
 * boot() loads /api/options (the option fields), the model and GPU catalogs, builds the form, restores the state
 * from the URL and asks for an answer. Every change asks again (debounced): POST /api/estimate, /api/check (the
 * verdict for the target GPU, with suggestions) and /api/plan (every catalog GPU/system that runs the job) in
 * parallel; the answer is drawn once all three have settled. Each reply is the JSON document the CLI prints with
 * --format json.
 */
'use strict';

/* ---------- theme (runs at once, before the page is built) ---------- */

const THEME_KEY = 'vramplan.theme';
const darkQuery = window.matchMedia('(prefers-color-scheme: dark)');

function storedTheme() {
  try { return localStorage.getItem(THEME_KEY); } catch { return null; }
}
if (['light', 'dark'].includes(storedTheme())) document.documentElement.dataset.theme = storedTheme();

function currentTheme() {
  return document.documentElement.dataset.theme || (darkQuery.matches ? 'dark' : 'light');
}

function updateThemeButton() {
  const next = currentTheme() === 'dark' ? 'light' : 'dark';
  const button = $('#theme-toggle');
  button.textContent = next === 'dark' ? '☾ Dark' : '☀ Light';
  button.title = `Switch to the ${next} theme`;
  button.setAttribute('aria-label', button.title);
}

function toggleTheme() {
  const next = currentTheme() === 'dark' ? 'light' : 'dark';
  document.documentElement.dataset.theme = next;
  try { localStorage.setItem(THEME_KEY, next); } catch { /* private mode: not remembered */ }
  updateThemeButton();
}

/* ---------- constants and small helpers ---------- */

const GIB = 2 ** 30;
const DEBOUNCE_MS = 250;
const MAX_FILE_BYTES = 256 * 1024;
const PLAN_ROWS = 20; // plan rows shown before "Show all"
const GROUPS = { run: 'Run', objective: 'Objective', lora: 'LoRA and QLoRA', layout: 'GPUs and layout', advanced: 'Advanced' };
const OPEN_GROUPS = new Set(['run', 'objective']);
const METHOD_LABELS = { full: 'Full fine-tuning', lora: 'LoRA', qlora: 'QLoRA (4-bit base)' };
// Fixed colours for the components vramplan reports; any other name gets a spare colour by hash.
const COMPONENT_COLORS = {
  weights: '#4e79a7', lora_adapters: '#f28e2b', optimizer_states: '#e15759', activations: '#59a14f',
  gradients: '#76b7b2', logits_loss: '#edc948', autocast_weight_copies: '#b07aa1', optimizer_temporaries: '#ff9da7',
  reference_model: '#9c755f', kv_cache: '#17becf', generation_batch: '#bcbd22', in_flight: '#8c6bb1',
};
const SPARE_COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#e377c2', '#7f7f7f', '#ff7f0e', '#8c564b'];
// Words spelled out or cased in labels made from field and component names.
const WORDS = {
  lora: 'LoRA', qlora: 'QLoRA', vllm: 'vLLM', gpu: 'GPU', gpus: 'GPUs', kv: 'KV', fsdp1: 'FSDP1', attn: 'attention',
  seq: 'sequence', len: 'length', num: 'number of', kbit: 'k-bit', ref: 'reference', cuda: 'CUDA', alloc: 'allocator', conf: 'config',
};

function $(selector, root = document) { return root.querySelector(selector); }
function $all(selector, root = document) { return Array.from(root.querySelectorAll(selector)); }

/** el('div', {class: 'x', dataset: {a: 1}, onclick: f}, 'text', child, [more]): a DOM element; null/false skipped. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'style') node.style.cssText = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  fill(node, ...children);
  return node;
}

/** node.replaceChildren, skipping null/false children (which it would print as "null"). */
function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function gib(bytes) { return `${(bytes / GIB).toFixed(2)} GiB`; }

function humanize(name) {
  const s = String(name).split(/[_\s]+/).map((w) => WORDS[w] || w).join(' ');
  return /^[a-z][A-Z]/.test(s) ? s : s.charAt(0).toUpperCase() + s.slice(1); // "vLLM ..." keeps its case
}

function colorFor(name) {
  if (COMPONENT_COLORS[name]) return COMPONENT_COLORS[name];
  let h = 0;
  for (const ch of String(name)) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return SPARE_COLORS[h % SPARE_COLORS.length];
}

function usd(amount) {
  const digits = Math.abs(amount) < 100 ? 2 : 0;
  return new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', minimumFractionDigits: digits,
    maximumFractionDigits: digits }).format(amount);
}

function duration(hours) {
  if (hours === null || hours === undefined) return '';
  if (hours < 1) return `${Math.max(1, Math.round(hours * 60))} min`;
  return hours < 48 ? `${hours.toFixed(1)} h` : `${(hours / 24).toFixed(1)} days`;
}

/** 8.07 B, 41.9 M, 100 M: a count with its scale. */
function count(n) {
  const [scale, unit, digits] = n >= 1e12 ? [1e12, ' T', 2] : n >= 1e9 ? [1e9, ' B', 2] : n >= 1e6 ? [1e6, ' M', 1] : [1, '', 0];
  return `${Number((n / scale).toFixed(digits))}${unit}`;
}

/** A shell word: bare when safe, else single-quoted. */
function shellQuote(word) {
  const s = String(word);
  return /^[A-Za-z0-9_.,:=/+%@-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

function flagOf(field) { return field.flag || `--${field.name.replace(/_/g, '-')}`; }

/* ---------- the app's state ---------- */

const app = {
  methods: [], fields: [], fieldByName: new Map(), models: [], gpus: [], gpuById: new Map(),
  modelId: '',      // what is sent as "model": a catalog id, or a Hub id typed by hand
  methodBeforeFile: '', // the method chosen before a training file took over, restored after
  timer: null, seq: 0, controller: null,
  hasAnswer: false, // an answer is on screen (an error then marks it stale)
  planSort: { key: null, dir: 1 }, planShowAll: false, lastPlan: null,
};

/* ---------- API ---------- */

/** The message of an error reply: vramplan's {"error": ...}, or FastAPI's {"detail": ...}. */
function errorMessage(data, response) {
  if (data && typeof data.error === 'string') return data.error;
  if (data && typeof data.detail === 'string') return data.detail;
  if (data && Array.isArray(data.detail)) {
    return data.detail.map((d) => `${(d.loc || []).filter((p) => p !== 'body').join('.')}: ${d.msg}`).join('; ');
  }
  return `${response.url.replace(location.origin, '')} answered HTTP ${response.status}`;
}

/** GET (no body) or POST JSON; the parsed reply, or an Error with the server's one-line message. */
async function callApi(path, body, signal) {
  const init = body === undefined ? { signal } :
    { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body), signal };
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch { /* not JSON */ }
  // "Does not fit" (the CLI's exit 3) is a 200 with fits: false; only a reply carrying "error" is an error.
  if (!response.ok || !data || data.error !== undefined) throw new Error(errorMessage(data, response));
  return data;
}

/* ---------- the form, built from /api/options ---------- */

function defaultLabel(field) {
  if (!field.default) return 'default';
  return `default (${field.default.length > 44 ? `${field.default.slice(0, 42)}…` : field.default})`;
}

/** The help without its "[default: ...]" tail, for the hint under a field. */
function hintText(field) {
  return (field.help || '').replace(/\s*\[default:[\s\S]*\]\s*$/, '').trim() || (field.default ? `Default: ${field.default}` : '');
}

/** int/float: number input; bool: default/on/off; choices: default + the choices; other text: a text input. */
function buildFieldControl(field) {
  const common = { id: `opt-${field.name}`, name: field.name, title: field.help || '', 'aria-describedby': `hint-${field.name}` };
  const blank = el('option', { value: '' }, defaultLabel(field));
  if (Array.isArray(field.choices) && field.choices.length) {
    return el('select', common, blank, field.choices.map((c) => el('option', { value: String(c) }, String(c))));
  }
  if (field.kind === 'bool') {
    return el('select', common, blank, el('option', { value: 'true' }, 'on'), el('option', { value: 'false' }, 'off'));
  }
  const placeholder = field.default ?? 'default';
  if (field.kind === 'int' || field.kind === 'float') {
    const int = field.kind === 'int';
    return el('input', { ...common, type: 'number', step: int ? '1' : 'any', inputmode: int ? 'numeric' : 'decimal', placeholder });
  }
  return el('input', { ...common, type: 'text', spellcheck: 'false', placeholder });
}

/** One collapsible <details> per group, known groups first, in the order the fields come. */
function buildOptionForm(fields) {
  const groupOf = (f) => f.group || 'advanced';
  const groups = [...new Set([...Object.keys(GROUPS), ...fields.map(groupOf)])];
  fill($('#option-groups'), groups.map((group) => {
    const members = fields.filter((f) => groupOf(f) === group);
    if (!members.length) return null;
    return el('details', { class: 'group', dataset: { group }, open: OPEN_GROUPS.has(group) },
      el('summary', {}, GROUPS[group] || humanize(group), el('span', { class: 'group-count', dataset: { countFor: group } })),
      el('div', { class: 'group-body' }, members.map((field) => el('div', { class: 'field', dataset: { field: field.name } },
        el('label', { class: 'field-label', for: `opt-${field.name}` }, humanize(field.name), el('span', { class: 'flag' }, flagOf(field))),
        buildFieldControl(field),
        el('p', { class: 'hint clamp', id: `hint-${field.name}`, title: field.help || '' }, hintText(field))))));
  }));
}

function defaultMethod() { return app.methods.includes('lora') ? 'lora' : app.methods[0]; }

function buildMethodSelect() {
  fill($('#method'), app.methods.map((m) => el('option', { value: m }, METHOD_LABELS[m] || m)));
  $('#method').value = defaultMethod();
}

/** A training file may leave the method to the file: an extra "" option, there only for that source. */
function syncMethodForSource(source) {
  const select = $('#method');
  const fromFile = select.querySelector('option[value=""]');
  if (source === 'from' && !fromFile) {
    app.methodBeforeFile = select.value;
    select.prepend(el('option', { value: '' }, 'As the file says'));
    select.value = '';
  } else if (source !== 'from' && fromFile) {
    const chosen = select.value;
    fromFile.remove();
    select.value = chosen || app.methodBeforeFile || defaultMethod();
  }
}

function defaultGpuId() {
  const ids = app.gpus.map((g) => g.id);
  return ['h100-80gb', 'h100-sxm5-80gb'].find((id) => ids.includes(id)) || ids.find((id) => id.startsWith('h100')) || ids[0] || '';
}

/** The target-GPU select, in optgroups by market segment when the catalog gives one. */
function buildGpuSelect() {
  const option = (g) => el('option', { value: g.id },
    `${g.name || g.id}${g.memory_bytes ? ` · ${(g.memory_bytes / GIB).toFixed(0)} GiB` : ''}`);
  const segments = [...new Set(app.gpus.map((g) => g.segment))];
  fill($('#target-gpu'), segments.length > 1 && !segments.includes(undefined)
    ? segments.map((s) => el('optgroup', { label: humanize(s) }, app.gpus.filter((g) => g.segment === s).map(option)))
    : app.gpus.map(option));
  $('#target-gpu').value = defaultGpuId();
}

/** A catalog GPU id for a URL's gpu: the id, a name, or the GPUs whose id has every part ("h100-80gb": the
 * default among them, else the first); else the text as given, for the server to judge. */
function resolveGpuText(text) {
  const t = text.trim().toLowerCase();
  const byName = app.gpus.find((g) => g.id === t || (g.name || '').toLowerCase() === t);
  if (byName) return byName.id;
  const parts = t.split(/[-\s]+/).filter(Boolean);
  const hits = app.gpus.filter((g) => parts.every((p) => g.id.split('-').includes(p))).map((g) => g.id);
  return hits.includes(defaultGpuId()) ? defaultGpuId() : hits[0] || text;
}

/** Let a select hold `value` (a URL may name one the lists lack: the server then says what is wrong). */
function setSelect(select, value) {
  if (value !== '' && !$all('option', select).some((o) => o.value === value)) select.append(el('option', { value }, value));
  select.value = value;
}

/* ---------- model picker: a combobox over the catalog ---------- */

function modelHaystack(m) {
  return [m.id, m.name, m.hf_repo, m.size_alias, m.family].filter(Boolean).join(' ').toLowerCase();
}

/** The catalog model a text names exactly (id, size alias, name or Hub repo), or undefined. */
function resolveModelText(text) {
  const t = text.trim().toLowerCase();
  if (!t) return undefined;
  for (const key of ['id', 'size_alias', 'name', 'hf_repo']) {
    const hit = app.models.find((m) => (m[key] || '').toLowerCase() === t);
    if (hit) return hit;
  }
  return undefined;
}

/** Models whose id/name/repo/alias contain every word typed, an exact match first. */
function filterModels(text) {
  const words = text.toLowerCase().split(/\s+/).filter(Boolean);
  const exact = resolveModelText(text);
  const hits = app.models.filter((m) => m !== exact && words.every((w) => modelHaystack(m).includes(w)));
  return exact ? [exact, ...hits] : hits;
}

function renderModelList(text) {
  const hits = filterModels(text).slice(0, 60);
  fill($('#model-list'), hits.map((m, i) => el('li', {
    role: 'option', id: `model-opt-${i}`, class: m.estimable === false ? 'not-estimable' : null,
    dataset: { modelId: m.id }, 'aria-selected': String(i === 0),
    onmousedown: (event) => { event.preventDefault(); chooseModel(m); },
  }, el('span', { class: 'opt-name' }, m.name || m.id),
  el('span', { class: 'opt-meta' }, [m.size_alias, m.hf_repo || m.id, m.total_params && count(m.total_params),
    m.estimable === false && 'not modelled'].filter(Boolean).join(' · ')))),
  hits.length ? null : el('li', { class: 'empty', role: 'presentation' },
    'No catalog model matches. For another model, paste its config.json (the config.json tab).'));
  setModelListOpen(true);
}

function setModelListOpen(open) {
  $('#model-list').hidden = !open;
  $('#model-search').setAttribute('aria-expanded', String(open));
  if (!open) $('#model-search').removeAttribute('aria-activedescendant');
}

function moveModelHighlight(step) {
  const options = $all('#model-list li[role=option]');
  if (!options.length) return;
  const at = options.findIndex((o) => o.getAttribute('aria-selected') === 'true');
  const next = (at + step + options.length) % options.length;
  options.forEach((o, i) => o.setAttribute('aria-selected', String(i === next)));
  options[next].scrollIntoView({ block: 'nearest' });
  $('#model-search').setAttribute('aria-activedescendant', options[next].id);
}

/** The line under the picker: id, repo and size, or why the model cannot be estimated. */
function showModelInfo(model, rawText = '') {
  const info = $('#model-info');
  const refused = model && model.estimable === false && model.refusal;
  info.classList.toggle('warn', Boolean(refused));
  info.textContent = !model ? (rawText && `${rawText}: not in the catalog list, sent as typed`)
    : [model.id, model.hf_repo, model.total_params && `${count(model.total_params)} parameters`,
      refused && `not modelled: ${model.refusal}`].filter(Boolean).join(' · ');
}

function chooseModel(model, { update = true } = {}) {
  $('#model-search').value = model.name || model.id;
  showModelInfo(model);
  setModelListOpen(false);
  const changed = app.modelId !== model.id;
  app.modelId = model.id;
  if (update && changed) scheduleUpdate();
}

function useRawModel(text) {
  app.modelId = text;
  $('#model-search').value = text;
  showModelInfo(undefined, text);
}

/** On Enter or leaving the field: an exact name, else the only match; a Hub-style org/name is sent as typed. */
function commitModelText() {
  const input = $('#model-search');
  const text = input.value.trim();
  const hits = filterModels(text);
  if (resolveModelText(text) || hits.length === 1) return chooseModel(resolveModelText(text) || hits[0]);
  setModelListOpen(false);
  if (text.includes('/')) { if (text !== app.modelId) { useRawModel(text); scheduleUpdate(); } return; }
  const current = app.models.find((m) => m.id === app.modelId); // nothing named: show the model still in use
  input.value = current ? current.name || current.id : app.modelId;
}

function wireModelPicker() {
  const input = $('#model-search');
  input.addEventListener('input', () => {
    renderModelList(input.value);
    const exact = resolveModelText(input.value); // "8b", an id or a full name answers at once
    if (exact && exact.id !== app.modelId) { app.modelId = exact.id; showModelInfo(exact); scheduleUpdate(); }
  });
  input.addEventListener('focus', () => { input.select(); renderModelList(''); });
  input.addEventListener('blur', commitModelText);
  input.addEventListener('keydown', (event) => {
    const open = !$('#model-list').hidden;
    if (event.key === 'ArrowDown' || event.key === 'ArrowUp') {
      event.preventDefault();
      if (!open) renderModelList(input.value);
      moveModelHighlight(event.key === 'ArrowDown' ? 1 : -1);
    } else if (event.key === 'Enter') {
      event.preventDefault();
      const active = open && $('#model-list li[aria-selected=true]');
      const model = active && app.models.find((m) => m.id === active.dataset.modelId);
      if (model) chooseModel(model); else commitModelText();
    } else if (event.key === 'Escape') {
      setModelListOpen(false);
    }
  });
}

/* ---------- reading and writing the form ---------- */

function currentSource() { return $('input[name=source]:checked').value; }

function showSourcePane(source) {
  for (const name of ['catalog', 'config', 'from']) $(`#pane-${name}`).hidden = name !== source;
  syncMethodForSource(source);
}

/** The option a control's text stands for, typed as the API wants it. */
function typedValue(field, raw) {
  if (field.kind === 'bool') return raw === 'true';
  if (field.kind !== 'int' && field.kind !== 'float') return raw;
  const n = Number(raw);
  return Number.isFinite(n) ? n : raw; // not a number: sent as text, the server's message names the flag
}

function readFormState() {
  const rawOptions = {}; // every set option by field name, as the text in its control
  for (const field of app.fields) {
    const control = $(`#opt-${field.name}`);
    if (control && control.value.trim() !== '') rawOptions[field.name] = control.value.trim();
  }
  return {
    source: currentSource(), modelId: app.modelId, method: $('#method').value, gpu: $('#target-gpu').value,
    tokens: $('#tokens').value.trim(), rawOptions, configText: $('#config-json').value, fromText: $('#from-text').value,
    fromName: $('#from-name').value.trim() || 'train.yaml', acceptUnmodelled: $('#accept-unmodelled').checked,
  };
}

function setFieldValue(name, value) {
  const control = $(`#opt-${name}`);
  if (!control) return;
  let text = value === null || value === undefined ? '' : String(value);
  if (app.fieldByName.get(name).kind === 'bool' && text) { // URLs and suggestions may spell a switch 1/on/yes
    const low = text.toLowerCase();
    text = ['true', '1', 'on', 'yes'].includes(low) ? 'true' : ['false', '0', 'off', 'no'].includes(low) ? 'false' : text;
  }
  if (control.tagName === 'SELECT') setSelect(control, text); else control.value = text;
  if (text) control.closest('details').open = true;
}

/** The URL's query, without "?": model, method, gpu, tokens and every set option by field name. */
function stateToQuery(state) {
  const params = new URLSearchParams();
  if (state.source === 'catalog' && state.modelId) params.set('model', state.modelId);
  for (const key of ['method', 'gpu', 'tokens']) if (state[key]) params.set(key, state[key]);
  for (const [name, value] of Object.entries(state.rawOptions)) params.set(name, value);
  return params.toString();
}

function restoreFromQuery(search) {
  const params = new URLSearchParams(search);
  const text = params.get('model');
  const model = text ? resolveModelText(text)
    : app.models.find((m) => m.id === 'llama-3.1-8b') || app.models.find((m) => m.estimable !== false) || app.models[0];
  if (model) chooseModel(model, { update: false }); else if (text) useRawModel(text);
  if (params.has('method')) setSelect($('#method'), params.get('method'));
  if (params.has('gpu')) setSelect($('#target-gpu'), resolveGpuText(params.get('gpu')));
  if (params.has('tokens')) $('#tokens').value = params.get('tokens');
  for (const field of app.fields) if (params.has(field.name)) setFieldValue(field.name, params.get(field.name));
}

function updateGroupCounts(rawOptions) {
  for (const badge of $all('[data-count-for]')) {
    const n = app.fields.filter((f) => (f.group || 'advanced') === badge.dataset.countFor && f.name in rawOptions).length;
    badge.textContent = n ? `${n} set` : '';
  }
}

/* ---------- request bodies ---------- */

/** The body every POST shares: model (or config, or training config), method and the set options; or a problem. */
function buildRunBody(state, { layout = true } = {}) {
  const body = {};
  if (state.source === 'catalog') {
    if (!state.modelId) return { problem: 'Pick a model from the catalog.' };
    body.model = state.modelId;
  } else if (state.source === 'config') {
    if (!state.configText.trim()) return { problem: 'Paste a Hugging Face config.json, or load one from a file.' };
    try {
      body.config = JSON.parse(state.configText);
    } catch (err) {
      return { problem: `The config.json is not valid JSON: ${err.message}` };
    }
    if (!body.config || typeof body.config !== 'object' || Array.isArray(body.config)) {
      return { problem: 'The config.json must be a JSON object.' };
    }
  } else {
    if (!state.fromText.trim()) return { problem: 'Paste a training config, or load one from a file.' };
    body.from_config = { name: state.fromName, text: state.fromText };
  }
  if (state.method) body.method = state.method;
  body.options = {};
  for (const [name, raw] of Object.entries(state.rawOptions)) {
    const field = app.fieldByName.get(name);
    if (layout || !field.layout) body.options[name] = typedValue(field, raw);
  }
  return { body };
}

function buildRequests(state) {
  const { body, problem } = buildRunBody(state);
  if (problem) return { problem };
  const verdictExtras = state.source === 'from' && state.acceptUnmodelled ? { accept_unmodelled: true } : {};
  // The plan picks GPU counts and strategies itself (the CLI's plan has no layout flags): layout options stay out.
  const plan = { ...buildRunBody(state, { layout: false }).body, ...verdictExtras };
  if (state.tokens) plan.tokens = state.tokens;
  return { estimate: body, check: { ...body, gpu: state.gpu, ...verdictExtras }, plan };
}

/* ---------- the update cycle ---------- */

function setPageState(state) {
  document.body.dataset.state = state;
  $('#answer').setAttribute('aria-busy', String(state === 'loading'));
}

function syncUrl(query) {
  const url = `${location.pathname}${query ? `?${query}` : ''}`;
  if (url !== `${location.pathname}${location.search}`) history.replaceState(null, '', url);
}

/** On any change: the URL, the command lines and the busy state at once; the request after the debounce. */
function scheduleUpdate(delay = DEBOUNCE_MS) {
  const state = readFormState();
  syncUrl(stateToQuery(state));
  updateGroupCounts(state.rawOptions);
  renderCli(state);
  setPageState('loading');
  clearTimeout(app.timer);
  app.timer = setTimeout(runUpdate, delay);
}

async function runUpdate() {
  const state = readFormState();
  const query = stateToQuery(state);
  syncUrl(query);
  renderCli(state);
  if (app.controller) app.controller.abort(); // an older request's answer is no longer wanted
  const seq = ++app.seq;
  const requests = buildRequests(state);
  if (requests.problem) return showFailure([requests.problem], query);
  const controller = new AbortController();
  app.controller = controller;
  setPageState('loading');
  const [estimate, check, plan] = await Promise.allSettled(['estimate', 'check', 'plan']
    .map((name) => callApi(`/api/${name}`, requests[name], controller.signal)));
  if (seq !== app.seq) return; // a newer change has been asked since: drop this answer
  app.controller = null;
  if (estimate.status === 'rejected') {
    return showFailure([estimate, check, plan].filter((r) => r.reason).map((r) => r.reason.message), query);
  }
  // The estimate stands; a failed verdict or plan shows its message in its own section and in #error.
  const checkError = check.reason ? check.reason.message : '';
  const planError = plan.reason ? plan.reason.message : '';
  renderAnswer(state, estimate.value, check.value, plan.value, checkError, planError);
  app.hasAnswer = true;
  $('#answer').classList.remove('is-stale');
  $('#stale-note').hidden = true;
  document.body.dataset.answerFor = query;
  const failures = [checkError && `Verdict: ${checkError}`, planError && `Plan: ${planError}`].filter(Boolean);
  setError(failures);
  if (failures.length) document.body.dataset.errorFor = query;
  setPageState(failures.length ? 'error' : 'ready');
}

/** Keep the previous answer, marked out of date, and say why in #error. */
function showFailure(messages, query) {
  setError(messages);
  if (app.hasAnswer) { $('#answer').classList.add('is-stale'); $('#stale-note').hidden = false; }
  else $('#verdict').textContent = 'No answer yet';
  document.body.dataset.errorFor = query;
  setPageState('error');
}

/** Show the messages in #error (hidden and empty when there are none) and outline the fields they name. */
function setError(messages) {
  const unique = [...new Set(messages)]; // estimate, check and plan often fail with one message
  const box = $('#error');
  fill(box, unique.length ? el('strong', {}, 'Cannot answer: ') : null, unique.map((m, i) => el('span', {}, i ? ` · ${m}` : m)));
  box.hidden = !unique.length;
  const text = unique.join(' ');
  if (/accept-unmodelled/.test(text)) $('#accept-unmodelled-row').hidden = false; // offered once a verdict is refused
  for (const field of app.fields) { // vramplan's messages name the flag: "--batch-size must be ..."
    const named = text && new RegExp(`${flagOf(field).split('/')[0]}(?![a-z-])`).test(text);
    if (named) $(`#opt-${field.name}`).setAttribute('aria-invalid', 'true'); else $(`#opt-${field.name}`).removeAttribute('aria-invalid');
  }
}

/* ---------- drawing the answer ---------- */

function renderAnswer(state, estimate, check, plan, checkError, planError) {
  const gpu = app.gpuById.get(state.gpu);
  const gpuName = gpu ? gpu.name : state.gpu;
  renderHeadline(estimate, check, checkError, gpuName, state.source);
  renderTotals(estimate);
  renderComponents(estimate, gpu, check);
  renderPhases(estimate);
  renderAssumptions(estimate, check);
  renderSuggestions(check, checkError, gpuName);
  app.lastPlan = plan;
  renderFitsOn(plan, planError, state);
}

function renderHeadline(estimate, check, checkError, gpuName, source) {
  const verdict = $('#verdict');
  verdict.className = `verdict${check ? (check.fits ? ' fits' : ' no-fit') : ''}`;
  verdict.textContent = !check ? `No verdict for ${gpuName}` : check.fits ? `Fits on ${gpuName}` : `Does not fit on ${gpuName}`;
  if (check) verdict.dataset.fits = String(Boolean(check.fits)); else delete verdict.dataset.fits;
  const s = estimate.setup || {};
  const model = estimate.model || {};
  const layout = s.gpus > 1 || s.nodes > 1 ? ` · ${s.strategy} on ${s.gpus} GPUs${s.nodes > 1 ? ` × ${s.nodes} nodes` : ''}` : '';
  // A pasted config.json has no catalog name: say so, with its family.
  const modelName = source === 'config' ? `Pasted config.json${model.spec && model.spec.family ? ` (${model.spec.family})` : ''}`
    : model.name || model.id || 'Model';
  fill($('#model-summary'), el('strong', {}, modelName),
    ` · ${METHOD_LABELS[s.method] || s.method}${s.objective ? ` · ${s.objective.toUpperCase()}` : ''}`,
    el('span', { class: 'muted' }, ` · ${count(estimate.total_params)} parameters, ${count(estimate.trainable_params)} trained`,
      ` · batch ${s.batch_size} × ${s.seq_len} tokens, ${s.precision}, ${s.optimizer}${layout}`));
  // The verdict's numbers, for the tightest GPU of the job.
  const g = check && (check.gpus || []).reduce((worst, x) => (!worst || x.margin_bytes < worst.margin_bytes ? x : worst), null);
  const headroom = check && check.headroom ? ` (${Math.round(check.headroom * 100)}% kept free)` : '';
  $('#verdict-detail').textContent = !check ? checkError : !g ? '' :
    `Needs ${gib(g.needed_bytes)} per GPU of ${gib(g.usable_bytes)} usable${headroom} on ${gib(g.total_bytes)}: ` +
    (g.margin_bytes >= 0 ? `${gib(g.margin_bytes)} to spare.` : `${gib(-g.margin_bytes)} short.`);
}

function renderTotals(estimate) {
  for (const [id, bytes] of [['peak-allocated', estimate.peak_allocated_bytes], ['peak-reserved', estimate.peak_reserved_bytes],
    ['device-bytes', estimate.device_bytes]]) {
    const node = $(`#${id}`);
    node.textContent = gib(bytes);
    node.dataset.bytes = String(bytes);
    node.title = `${bytes.toLocaleString('en-US')} bytes`;
  }
  const parts = [['CUDA context', estimate.cuda_context_bytes], ['NCCL buffers', estimate.nccl_bytes],
    ['paged optimizer (may spill to host)', estimate.paged_optimizer_bytes], ['host RAM per GPU (offload)', estimate.host_bytes]]
    .filter(([, b]) => b).map(([label, b]) => `${label} ${gib(b)}`);
  const share = estimate.colocated && estimate.colocated.gpu_memory_utilization;
  if (share) parts.push(`plus vLLM's colocated share: ${Math.round(share * 100)}% of each GPU's memory`);
  $('#extra-bytes').textContent = parts.length ? `Included or alongside: ${parts.join(' · ')}.` : '';
}

/** Non-zero components, largest first. */
function componentList(components) {
  return Object.entries(components || {}).filter(([, b]) => b > 0).sort((a, b) => b[1] - a[1]);
}

/** The peak's components as one stacked bar (then the allocator's cache and the CUDA context), the target GPU's
 * memory as a line across it, and a legend. */
function renderComponents(estimate, gpu, check) {
  const parts = componentList(estimate.components);
  const allocated = parts.reduce((sum, [, b]) => sum + b, 0);
  const overheads = [ // not components: reserved - allocated, and device - reserved
    ['allocator-cache', 'Allocator cache (reserved − allocated)', estimate.peak_reserved_bytes - allocated, 'var(--hatch)'],
    ['cuda-context', 'CUDA context and libraries', estimate.device_bytes - estimate.peak_reserved_bytes, 'var(--hatch-2)'],
  ].filter(([, , b]) => b > 0);
  const total = allocated + overheads.reduce((sum, [, , b]) => sum + b, 0);
  const memory = gpu && gpu.memory_bytes ? gpu.memory_bytes : 0;
  const usable = check && check.gpus && check.gpus[0] ? check.gpus[0].usable_bytes : 0;
  const scale = Math.max(total, memory) * 1.04 || 1;
  const pct = (b) => `${((b / scale) * 100).toFixed(3)}%`;
  const segment = (data, label, bytes, color) => el('div', { class: 'seg', dataset: { ...data, bytes: String(bytes) },
    style: `width:${pct(bytes)};background:${color}`,
    title: `${label}: ${gib(bytes)} (${((bytes / total) * 100).toFixed(1)}% of the device total)` });
  const legendRow = (data, label, bytes, color, share) => el('li', {
    dataset: { ...data, bytes: String(bytes) }, class: share ? null : 'legend-overhead' },
    el('span', { class: 'swatch', style: `background:${color}` }), el('span', { class: 'legend-name' }, label),
    el('span', { class: 'num' }, gib(bytes)), el('span', { class: 'pct' }, share));
  const markers = [];
  if (memory) { // the label goes on whichever side of the line has room
    markers.push(el('div', { class: `marker${memory / scale < 0.5 ? ' label-right' : ''}`, style: `left:${pct(memory)}`,
      dataset: { bytes: String(memory) }, title: `${gpu.name}: ${gib(memory)}` },
    el('span', { class: 'marker-label' }, `${gpu.name}: ${gib(memory)}`)));
  }
  if (usable && usable < memory) {
    markers.push(el('div', { class: 'marker marker-usable', style: `left:${pct(usable)}`, dataset: { bytes: String(usable) },
      title: `usable after the headroom: ${gib(usable)}` }));
  }
  fill($('#components'),
    el('div', { class: 'stack-wrap' },
      el('div', { class: 'stack', role: 'img', 'aria-label': `Memory by component, ${gib(total)} on the device` },
      parts.map(([name, b]) => segment({ component: name }, humanize(name), b, colorFor(name))),
      overheads.map(([key, label, b, color]) => segment({ overhead: key }, label, b, color))), markers),
    el('ul', { class: 'legend' },
      parts.map(([name, b]) => legendRow({ component: name }, humanize(name), b, colorFor(name), `${((b / allocated) * 100).toFixed(0)}%`)),
      overheads.map(([key, label, b, color]) => legendRow({ overhead: key }, label, b, color, ''))));
}

/** One row per phase: its total (the sum of its components, computed here) as a stacked bar. */
function renderPhases(estimate) {
  const phases = (estimate.phases || []).map((p) => ({ ...p, total: Object.values(p.components || {}).reduce((s, b) => s + b, 0) }));
  const max = Math.max(1, ...phases.map((p) => p.total));
  fill($('#phases'), phases.map((p) => {
    const isPeak = p.phase === estimate.peak_phase && p.total === max;
    return el('div', { class: `phase${isPeak ? ' is-peak' : ''}`, dataset: { phase: p.phase, bytes: String(p.total) } },
      el('div', { class: 'phase-name' }, humanize(p.phase), isPeak && el('span', { class: 'badge' }, 'peak')),
      el('div', { class: 'phase-track' }, el('div', { class: 'phase-bar', style: `width:${((p.total / max) * 100).toFixed(2)}%` },
        componentList(p.components).map(([name, b]) => el('div', { class: 'seg', dataset: { part: name },
          style: `width:${((b / p.total) * 100).toFixed(3)}%;background:${colorFor(name)}`, title: `${humanize(name)}: ${gib(b)}` })))),
      el('div', { class: 'num' }, gib(p.total)));
  }));
}

function renderAssumptions(estimate, check) {
  const list = (items) => el('ul', { class: 'plain-list' }, items.map((t) => el('li', {}, t)));
  const notes = estimate.strategy_notes || [];
  fill($('#assumptions'), list(estimate.assumptions || []),
    notes.length > 0 && [el('h3', { class: 'sub-title' }, 'Strategy notes'), list(notes)],
    check && check.basis && el('p', { class: 'hint' }, `Verdict basis: ${check.basis}`));
}

/** One suggestion (check's or plan's): the change, what it then needs, its flags to copy, and Apply. */
function suggestionItem(s) {
  const flags = (s.flags || []).map(shellQuote).join(' ');
  return el('li', { class: 'suggestion', dataset: { fits: String(Boolean(s.fits)) } },
    el('div', { class: 'suggestion-head' },
      el('span', { class: `badge ${s.fits ? 'badge-ok' : 'badge-no'}` }, s.fits ? 'fits' : 'still too big'),
      el('span', { class: 'suggestion-change' }, s.change)),
    el('div', { class: 'suggestion-meta' }, `needs ${gib(s.needed_bytes)} per GPU`, s.saved_bytes ? `, saves ${gib(s.saved_bytes)}` : '',
      s.note ? ` · ${s.note}` : ''),
    el('div', { class: 'suggestion-actions' }, flags && [el('code', { class: 'snippet' }, flags),
      el('button', { class: 'btn btn-small', type: 'button', onclick: (e) => copyText(flags, e.currentTarget) }, 'Copy')],
    s.changes && el('button', { class: 'btn btn-small btn-primary', type: 'button', onclick: () => applyChanges(s.changes) }, 'Apply')));
}

function renderSuggestions(check, checkError, gpuName) {
  $('#suggestions-sub').textContent = gpuName ? `to run on ${gpuName}` : '';
  const items = (check && check.suggestions) || [];
  fill($('#suggestions'), !check ? el('p', { class: 'notice' }, checkError || 'No verdict.')
    : items.length ? el('ul', { class: 'suggestions' }, items.map(suggestionItem))
      : el('p', { class: 'notice' }, check.fits ? 'Nothing: it fits as it is.' : 'vramplan has no change to suggest for this GPU.'));
}

/** Apply a suggestion's changes (option names, plus possibly method) to the form, then ask again. */
function applyChanges(changes) {
  for (const [key, value] of Object.entries(changes)) {
    if (key === 'method' || key === 'gpu') setSelect($(key === 'gpu' ? '#target-gpu' : '#method'), String(value));
    else if (key === 'tokens') $('#tokens').value = String(value);
    else if (app.fieldByName.has(key)) setFieldValue(key, value);
  }
  scheduleUpdate(0);
}

/* ---------- the plan's table ---------- */

const dash = (title) => el('span', { class: 'muted', title: title || '' }, '–');
const sub = (text, extra = '') => el('div', { class: `cell-sub ${extra}` }, text);

/** Columns: label, sort key of an option (null sorts last) and its cell. */
const PLAN_COLUMNS = [
  { key: 'name', label: 'GPU or system', sort: (o) => o.name.toLowerCase(), cell: planNameCell },
  { key: 'gpus', label: 'GPUs', num: true, sort: (o) => o.gpus_used * (o.nodes || 1),
    cell: (o) => [o.nodes > 1 ? `${o.gpus_used} × ${o.nodes} nodes` : String(o.gpus_used),
      sub(`${o.strategy}${o.offload && o.offload !== 'none' ? ` + offload ${o.offload}` : ''}`, 'wrap')] },
  { key: 'needed', label: 'Needed / memory (GiB)', num: true, sort: (o) => o.needed_bytes,
    cell: (o) => [el('span', { title: `per GPU: ${gib(o.needed_bytes)} of ${gib(o.gpu_memory_bytes)}` },
      `${(o.needed_bytes / GIB).toFixed(1)} / ${(o.gpu_memory_bytes / GIB).toFixed(1)}`),
    sub(`${(o.headroom_bytes / GIB).toFixed(1)} spare`)] },
  { key: 'time', label: 'Time', num: true, sort: (o) => o.hours,
    cell: (o) => (o.hours == null ? dash(o.cost_basis)
      : el('span', { title: o.hours_low != null ? `${duration(o.hours_low)} to ${duration(o.hours_high)}` : '' }, duration(o.hours))) },
  { key: 'buy', label: 'Buy', num: true, sort: (o) => (o.purchase ? o.purchase.upfront_usd : null),
    cell: (o) => (!o.purchase ? dash(o.not_buyable)
      : el('span', { title: o.purchase.basis || '' }, usd(o.purchase.upfront_usd), o.purchase.estimated && sub('estimated'))) },
  { key: 'rent', label: 'Rent (job)', num: true, sort: (o) => o.rent_usd,
    cell: (o) => (o.rent_usd == null ? dash() : el('span', { title: o.cost_basis || '' }, usd(o.rent_usd),
      o.price && o.price.kind === 'cloud-hourly' && sub(`${usd(o.price.amount)}/h`))) },
  { key: 'cost', label: 'Job cost', num: true, sort: (o) => o.cost_usd,
    cell: (o) => (o.cost_usd == null ? dash(o.cost_basis) : el('span', { title: o.cost_basis || '' }, usd(o.cost_usd))) },
];

function planNameCell(o) {
  const tags = [['cheapest', 'cheapest'], ['cheapest_buy', 'cheapest to buy'], ['cheapest_rent', 'cheapest to rent'],
    ['fastest', 'fastest']].filter(([k]) => o[k]).map(([, label]) => el('span', { class: 'badge badge-tag' }, label));
  const notes = o.notes || [];
  const extra = [...(o.traded || []).filter((t) => !notes.some((n) => n.includes(t))).map((t) => `traded: ${t}`), ...notes].join('; ');
  return el('div', { class: 'plan-name' },
    o.kind === 'system' ? el('span', { class: 'kind', title: 'a system: a machine or cloud instance' }, 'SYS')
      : el('span', { class: 'kind', title: 'GPUs' }, 'GPU'),
    el('span', { title: o.choice || '' }, o.name), tags, extra && el('div', { class: 'hint' }, extra));
}

function sortedPlanOptions(options) {
  const column = PLAN_COLUMNS.find((c) => c.key === app.planSort.key);
  if (!column) return options; // the server's order: by job cost
  return [...options].sort((a, b) => {
    const x = column.sort(a);
    const y = column.sort(b);
    if (x === y) return 0;
    if (x === null || x === undefined) return 1; // unknowns last either way
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * app.planSort.dir;
  });
}

/** The plan's options as a sortable table (or, when none runs the job, the plan's suggestions). */
function renderFitsOn(plan, planError, state) {
  const box = $('#fits-on');
  $('#fits-on-sub').textContent = '';
  if (!plan) return fill(box, el('p', { class: 'notice' }, planError || 'No plan.'));
  const options = plan.options || [];
  const rejected = plan.rejected || [];
  const a = plan.assumptions || {};
  $('#fits-on-sub').textContent = `${options.length} of ${options.length + rejected.length}`;
  const layoutSet = app.fields.filter((f) => f.layout && f.name in state.rawOptions).map((f) => f.name);
  const basis = [
    plan.training_tokens ? `Time and cost for ${count(plan.training_tokens)} training tokens` : 'No training tokens: no time or cost',
    a.headroom != null && `${Math.round(a.headroom * 100)}% of each GPU kept free`,
    a.amortisation_years && `purchases spread over ${a.amortisation_years} years at ${Math.round((a.busy_share || 0) * 100)}% busy`,
    a.energy_usd_per_kwh != null && `energy ${usd(a.energy_usd_per_kwh)}/kWh`,
  ].filter(Boolean).join('; ');
  const head = [el('p', { class: 'hint' }, `${basis}.`), layoutSet.length > 0 && el('p', { class: 'hint' },
    `The plan picks GPU counts and strategies itself: ${layoutSet.join(', ')} apply to the estimate and the verdict only.`)];
  if (!options.length) {
    const suggestions = plan.suggestions || [];
    return fill(box, el('p', { class: 'notice notice-bad' }, 'Nothing in the catalog runs this job as it is.'), head,
      suggestions.length > 0 && [el('h3', { class: 'sub-title' }, 'Changes to try'),
        el('ul', { class: 'suggestions' }, suggestions.map(suggestionItem))]);
  }
  const rows = sortedPlanOptions(options);
  const header = el('tr', {}, PLAN_COLUMNS.map((c) => {
    const sorted = app.planSort.key === c.key;
    const up = app.planSort.dir > 0;
    return el('th', { scope: 'col', class: c.num ? 'num' : null, 'aria-sort': sorted ? (up ? 'ascending' : 'descending') : 'none' },
      el('button', { type: 'button', class: 'th-sort', onclick: () => sortPlanBy(c.key) }, c.label,
        el('span', { 'aria-hidden': 'true' }, sorted ? (up ? ' ▲' : ' ▼') : '')));
  }));
  const body = (app.planShowAll ? rows : rows.slice(0, PLAN_ROWS)).map((o) => el('tr', {
    class: o.gpu === state.gpu ? 'is-target' : null, dataset: { id: o.id, gpu: o.gpu, kind: o.kind } },
  PLAN_COLUMNS.map((c) => el('td', { class: c.num ? 'num' : null }, c.cell(o)))));
  fill(box, head,
    el('div', { class: 'table-scroll' }, el('table', { class: 'plan-table' }, el('thead', {}, header), el('tbody', {}, body))),
    rows.length > PLAN_ROWS && el('button', { type: 'button', class: 'btn btn-small', id: 'plan-show-all',
      onclick: () => { app.planShowAll = !app.planShowAll; rerenderPlan(); } },
    app.planShowAll ? `Show the first ${PLAN_ROWS}` : `Show all ${rows.length}`),
    rejected.length > 0 && el('details', { class: 'rejected' }, el('summary', {}, `Why not the other ${rejected.length}`),
      el('ul', { class: 'plain-list' }, rejected.map((r) => el('li', {}, el('strong', {}, r.name), `: ${r.choice || 'does not fit'}`)))));
}

function sortPlanBy(key) {
  app.planSort = app.planSort.key === key ? { key, dir: -app.planSort.dir } : { key, dir: 1 };
  rerenderPlan();
}

function rerenderPlan() {
  if (app.lastPlan) renderFitsOn(app.lastPlan, '', readFormState());
}

/* ---------- the equivalent command lines ---------- */

/** The CLI words for the state: --model or --from, --method and one flag per set option. */
function cliArgs(state, { layout = true } = {}) {
  const words = state.source === 'catalog' ? ['--model', state.modelId || '<model>']
    : state.source === 'config' ? ['--model', 'config.json'] : ['--from', state.fromName];
  if (state.method) words.push('--method', state.method);
  for (const [name, raw] of Object.entries(state.rawOptions)) {
    const field = app.fieldByName.get(name);
    if (!layout && field.layout) continue;
    const flag = flagOf(field);
    if (field.kind !== 'bool') { words.push(flag, raw); continue; }
    // A switch is "--x/--no-x" or "--x": on is the first spelling, off the second (else --no-x).
    const [on, off] = flag.includes('/') ? flag.split('/') : [flag, `--no-${flag.replace(/^--/, '')}`];
    words.push(raw === 'true' ? on : off);
  }
  return words.map(shellQuote).join(' ');
}

function renderCli(state) {
  const accept = state.source === 'from' && state.acceptUnmodelled ? ' --accept-unmodelled' : '';
  $('#cli-command').textContent = `vramplan estimate ${cliArgs(state)}`;
  $('#cli-check').textContent = `vramplan check --gpu ${shellQuote(state.gpu)} ${cliArgs(state)}${accept}`;
  const tokens = state.tokens ? ` --tokens ${shellQuote(state.tokens)}` : '';
  $('#cli-plan').textContent = `vramplan plan ${cliArgs(state, { layout: false })}${tokens}${accept}`;
  $('#cli-note').textContent = state.source === 'config' ? 'Save the pasted text as config.json first.'
    : state.source === 'from' ? `Save the training config as ${state.fromName} first.` : '';
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch { // the clipboard API needs a secure context: fall back to a hidden textarea
    const area = el('textarea', { style: 'position:fixed;opacity:0' }, text);
    document.body.append(area);
    area.select();
    document.execCommand('copy');
    area.remove();
  }
  const label = button.textContent;
  button.textContent = 'Copied';
  setTimeout(() => { button.textContent = label; }, 1200);
}

/* ---------- wiring and start ---------- */

function setFieldMessage(id, text) {
  $(`#${id}`).textContent = text;
  $(`#${id}`).hidden = !text;
}

/** Read a chosen file into its textarea, refusing files over 256 KiB. */
function wireFileInput(fileId, textId, messageId, onName) {
  $(`#${fileId}`).addEventListener('change', async (event) => {
    const file = event.target.files && event.target.files[0];
    if (!file) return;
    if (file.size > MAX_FILE_BYTES) {
      setFieldMessage(messageId, `${file.name} is ${(file.size / 1024).toFixed(0)} KiB: the limit is 256 KiB.`);
      event.target.value = '';
      return;
    }
    setFieldMessage(messageId, '');
    $(`#${textId}`).value = await file.text();
    if (onName) onName(file.name);
    scheduleUpdate(0);
  });
}

function wireForm() {
  const form = $('#job-form');
  form.addEventListener('submit', (event) => event.preventDefault());
  const onEdit = (event) => {
    if (event.target.id === 'model-search' || event.target.type === 'file') return; // these handle themselves
    if (event.target.name === 'source') {
      showSourcePane(currentSource());
      setFieldMessage('config-msg', '');
      setFieldMessage('from-msg', '');
    }
    scheduleUpdate();
  };
  form.addEventListener('input', onEdit);
  form.addEventListener('change', onEdit);
  $('#reset-options').addEventListener('click', () => {
    for (const field of app.fields) setFieldValue(field.name, '');
    scheduleUpdate(0);
  });
  wireModelPicker();
  wireFileInput('config-file', 'config-json', 'config-msg');
  wireFileInput('from-file', 'from-text', 'from-msg', (name) => { $('#from-name').value = name; });
  for (const button of $all('[data-copy-from]')) {
    button.addEventListener('click', () => copyText($(`#${button.dataset.copyFrom}`).textContent, button));
  }
}

async function boot() {
  updateThemeButton();
  $('#theme-toggle').addEventListener('click', toggleTheme);
  darkQuery.addEventListener('change', updateThemeButton);
  setPageState('loading');
  let options; let models; let gpus;
  try {
    [options, models, gpus] = await Promise.all(['/api/options', '/api/catalog/models', '/api/catalog/gpus'].map((path) => callApi(path)));
  } catch (err) {
    return showFailure([`Could not load the page's data: ${err.message}`], location.search.slice(1));
  }
  app.methods = options.methods || ['full', 'lora', 'qlora'];
  app.fields = options.fields || [];
  app.fieldByName = new Map(app.fields.map((f) => [f.name, f]));
  app.models = models.items || [];
  app.gpus = gpus.items || [];
  app.gpuById = new Map(app.gpus.map((g) => [g.id, g]));
  buildMethodSelect();
  buildOptionForm(app.fields);
  buildGpuSelect();
  restoreFromQuery(location.search);
  wireForm();
  updateGroupCounts(readFormState().rawOptions);
  runUpdate();
}

document.addEventListener('DOMContentLoaded', boot);
