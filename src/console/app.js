'use strict';
// The console: sign in with the admin token (kept in this tab's sessionStorage), list
// instances (polled every second), create, open, start, stop, keep alive, delete, and show a
// user's workspace. Every call goes to the API; its failures ({"error", "message"}) are shown
// next to the field they name (`invalid_<field>`) or beside the list.
(() => {
  const KEY = 'vod-admin-token';
  const $ = (id) => document.getElementById(id);
  const FIELDS = ['user_id', 'base_image', 'vscode_version', 'storage_size', 'memory_request',
    'memory_limit', 'cpu_request', 'cpu_limit', 'idle_timeout', 'idle_notice'];
  const NUMBERS = new Set(['idle_timeout', 'idle_notice']);
  // Token URLs of instances created (or rotated) in this tab, to open them with.
  const opened = new Map();
  let timer = null;

  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ''}`, Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let resp;
    try {
      resp = await fetch(`/api${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new ApiError(0, 'unreachable', `the server cannot be reached: ${e.message}`);
    }
    const v = await resp.json().catch(() => null);
    if (!resp.ok) {
      throw new ApiError(resp.status, (v && v.error) || 'error', (v && v.message) || `HTTP ${resp.status}`);
    }
    return v;
  }

  function show(signedIn) {
    $('signin').hidden = signedIn;
    $('app').hidden = !signedIn;
    $('signout').hidden = !signedIn;
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    clearTimeout(timer);
    show(false);
    $('token-error').textContent = message || '';
    $('token').setAttribute('aria-invalid', message ? 'true' : 'false');
    $('token').focus();
  }

  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    if (!t) { $('token-error').textContent = 'Enter the admin token.'; return; }
    sessionStorage.setItem(KEY, t);
    try {
      await api('GET', '/instances');
    } catch (e) {
      signOut(e.message);
      return;
    }
    $('token').value = '';
    $('token-error').textContent = '';
    $('token').removeAttribute('aria-invalid');
    show(true);
    refresh();
  });
  $('signout').addEventListener('click', () => signOut(''));

  function clearErrors() {
    for (const f of [...FIELDS, 'form']) {
      $(`e-${f}`).textContent = '';
      const input = $(`f-${f}`);
      if (input) input.removeAttribute('aria-invalid');
    }
  }

  $('create-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors();
    $('created').textContent = '';
    const body = {};
    for (const f of FIELDS) {
      const v = $(`f-${f}`).value.trim();
      if (v === '') continue;
      body[f] = NUMBERS.has(f) && /^\d+$/.test(v) ? Number(v) : v;
    }
    try {
      const c = await api('POST', '/instances', body);
      opened.set(c.instance_id, c.url);
      const link = document.createElement('a');
      link.href = c.url;
      link.target = '_blank';
      link.rel = 'noopener';
      link.textContent = c.url;
      $('created').replaceChildren(`Created ${c.instance_id}. Its URL (with its access token, shown once): `, link);
      ev.target.reset();
      refresh();
    } catch (e) {
      const field = e.code.startsWith('invalid_') ? e.code.slice('invalid_'.length) : '';
      if (FIELDS.includes(field)) {
        $(`e-${field}`).textContent = e.message;
        $(`f-${field}`).setAttribute('aria-invalid', 'true');
        $(`f-${field}`).focus();
      } else if (e.status === 401) {
        signOut(e.message);
      } else {
        $('e-form').textContent = e.message;
      }
    }
  });

  const when = (t) => (t ? new Date(t).toLocaleString() : '—');

  function button(label, name, fn) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = label;
    b.dataset.action = name;
    b.addEventListener('click', fn);
    return b;
  }

  async function act(what, id, fn) {
    $('notice').textContent = `${what} ${id}…`;
    try {
      await fn();
      $('notice').textContent = `${what} ${id}: done.`;
    } catch (e) {
      if (e.status === 401) { signOut(e.message); return; }
      $('notice').textContent = `${what} ${id} failed: ${e.message}`;
    }
    refresh();
  }

  function row(i) {
    const tr = document.createElement('tr');
    tr.id = `row-${i.instance_id}`;
    const cell = (text, cls) => {
      const td = document.createElement('td');
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
      return td;
    };
    cell(i.instance_id);
    const user = cell('');
    user.append(button(i.user_id, 'workspace', () => workspace(i.user_id)));
    user.firstChild.setAttribute('aria-label', `Workspace of ${i.user_id}`);
    const st = cell(i.status, `status s-${i.status}`);
    if (i.message) st.title = i.message;
    cell(when(i.last_activity));
    cell(when(i.idle_stop_at));
    cell(i.stop_reason || '—');
    const actions = cell('', 'actions');
    const id = i.instance_id;
    actions.append(
      button('Open', 'open', () => {
        // The token URL when this tab has it; else the instance's URL (a browser that has
        // opened it before holds its cookie). Opening starts a stopped instance.
        window.open(opened.get(id) || i.url, '_blank', 'noopener');
        setTimeout(refresh, 300);
      }),
      button('Start', 'start', () => act('Starting', id, () => api('POST', `/instances/${id}/start`))),
      button('Stop', 'stop', () => act('Stopping', id, () => api('POST', `/instances/${id}/stop`))),
      button('Keep alive', 'keepalive', () => act('Keeping alive', id, () => api('POST', `/instances/${id}/keepalive`, {}))),
      button('Delete', 'delete', () => act('Deleting', id, () => api('DELETE', `/instances/${id}`))),
    );
    for (const b of actions.querySelectorAll('button')) b.setAttribute('aria-label', `${b.textContent} ${id}`);
    return tr;
  }

  async function refresh() {
    clearTimeout(timer);
    if (!sessionStorage.getItem(KEY)) return;
    try {
      const v = await api('GET', '/instances');
      const rows = v.instances.sort((a, b) => a.instance_id.localeCompare(b.instance_id)).map(row);
      $('instances').tBodies[0].replaceChildren(...rows);
      $('empty').hidden = rows.length > 0;
    } catch (e) {
      if (e.status === 401) { signOut(e.message); return; }
      $('notice').textContent = `Listing failed: ${e.message}`;
    }
    timer = setTimeout(refresh, 1000);
  }

  async function workspace(user) {
    const dl = $('ws');
    try {
      const w = await api('GET', `/workspaces/${encodeURIComponent(user)}`);
      const items = [['User', w.user_id], ['Exists', w.workspace_exists ? 'yes' : 'no'],
        ['Status', w.status], ['Storage', w.storage_size], ['Created', when(w.creation_time)],
        ['Running instances', String(w.active_instances)], ['Instances', w.instances.join(', ') || '—']];
      dl.replaceChildren(...items.flatMap(([k, v]) => {
        const dt = document.createElement('dt'); dt.textContent = k;
        const dd = document.createElement('dd'); dd.textContent = v;
        return [dt, dd];
      }));
    } catch (e) {
      const dd = document.createElement('dd'); dd.textContent = e.message;
      dl.replaceChildren(dd);
    }
    $('workspace').hidden = false;
  }

  if (sessionStorage.getItem(KEY)) { show(true); refresh(); } else { show(false); }
})();
