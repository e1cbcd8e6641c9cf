/* chatbuffer inspector: polls the admin API every 3 s and ticks countdowns every second.
   Everything from the API is put in the page with textContent (message text is customer input). */
'use strict';

(() => {
  const POLL_MS = 3000;
  const TOKEN_KEY = 'chatbuffer.adminToken';   // sessionStorage: gone when the tab closes
  const ACTOR_KEY = 'chatbuffer.adminActor';   // localStorage: the name stays

  const state = {
    token: null,
    actor: 'admin',
    offset: 0,          // server clock minus local clock (ms), from stats.now
    lastOk: 0,          // when the last full refresh succeeded (local ms)
    failing: false,
    inflight: false,
    timer: null,
    started: false,
    rendered: {},       // section -> JSON of what is on screen, to skip identical re-renders
    drawerId: null,
    verified: false,    // the token was accepted since the last sign-in
    again: false,       // an action asked for fresh data while a refresh was running
    drawerJson: '',
  };

  // ---- small helpers ------------------------------------------------------------------------

  const { $, el, parseTime } = window.chatbufferPage;  // common.js
  const serverNow = () => Date.now() + state.offset;

  function duration(seconds) {
    if (seconds == null || !Number.isFinite(seconds)) return '—';
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return s % 60 ? `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s` : `${s / 60} min`;
    if (s < 86400) return s % 3600 >= 60 ? `${Math.floor(s / 3600)} h ${String(Math.floor(s % 3600 / 60)).padStart(2, '0')} min` : `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} d ${Math.floor(s % 86400 / 3600)} h`;
  }

  /** Lateness and the like: one decimal under 10 s. */
  function seconds(value) {
    if (value == null || !Number.isFinite(Number(value))) return '—';
    const v = Number(value);
    if (v < 1) return `${Math.round(v * 1000)} ms`;
    return v < 10 ? `${v.toFixed(1)} s` : duration(v);
  }

  function ago(iso) {
    const t = parseTime(iso);
    if (!Number.isFinite(t)) return '';
    const s = (serverNow() - t) / 1000;
    if (s < 5) return 'just now';
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return clock(iso);
  }

  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit', second: '2-digit' });
  const dateTimeFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: 'numeric', minute: '2-digit' });
  function clock(iso) {
    const t = parseTime(iso);
    if (!Number.isFinite(t)) return '—';
    const d = new Date(t);
    return d.toDateString() === new Date().toDateString() ? timeFmt.format(d) : dateTimeFmt.format(d);
  }

  const plural = (n, one, many = one + 's') => `${n} ${n === 1 ? one : many}`;
  const OUTCOME = { replied: 'Replied', no_reply: 'No reply', handed_off: 'Handed off' };
  const STATE_LABEL = {
    active: 'Waiting', processing: 'Processing', retrying: 'Retrying',
    completed: 'Completed', failed: 'Failed', cancelled: 'Cancelled',
  };

  function badge(tone, label) { return el('span', { class: 'badge', data: { tone }, text: label }); }

  function toast(message, tone = 'ok') {
    const node = el('div', { class: 'toast', data: { tone }, role: 'status', text: message });
    $('toasts').append(node);
    setTimeout(() => { node.classList.add('leaving'); setTimeout(() => node.remove(), 250); }, 3800);
  }

  // ---- API ----------------------------------------------------------------------------------

  class AuthError extends Error {}
  class ApiOffError extends Error {}

  async function api(path, { method = 'GET', body } = {}) {
    // Header values must be ISO-8859-1: the name travels percent-encoded ("Łukasz", "张伟").
    const headers = { Authorization: `Bearer ${state.token}`,
                      'X-Admin-Actor': encodeURIComponent(state.actor || 'admin') };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, { method, headers, cache: 'no-store', body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      throw new Error('cannot reach the server');
    }
    let data = null;
    try { data = await response.json(); } catch (_) { /* not JSON: handled below */ }
    if (response.status === 401) throw new AuthError((data && data.error) || 'wrong token');
    if (response.status === 404 && data && /admin API is off/i.test(data.error || '')) throw new ApiOffError(data.error);
    if (!response.ok) throw new Error((data && data.error) || `HTTP ${response.status}`);
    return data;
  }

  const conversationPath = (b) => '/admin/api/conversations/' +
    [b.channel, b.account_id, b.conversation_id].map((p) => encodeURIComponent(String(p))).join('/');

  /** Errors that end the session go back to the gate; the rest become a toast. */
  function handleError(err, context) {
    if (err instanceof AuthError) { showGate('Wrong token'); return; }
    if (err instanceof ApiOffError) { showApiOff(err.message); return; }
    toast(context ? `${context}: ${err.message}` : err.message, 'error');
  }

  // ---- gate (sign-in) ----------------------------------------------------------------------

  function showGate(error) {
    stopPolling();
    state.token = null;
    state.verified = false;
    sessionStorage.removeItem(TOKEN_KEY);
    closeDrawer();
    $('app').hidden = true;
    $('gate').hidden = false;
    $('api-off').hidden = true;
    $('signin').hidden = false;
    $('signin-error').hidden = !error;
    $('signin-error').textContent = error || '';
    $('signin-submit').disabled = false;
    const input = $('signin-token');
    input.value = '';
    input.focus();
  }

  function showApiOff(message) {
    stopPolling();
    closeDrawer();
    $('app').hidden = true;
    $('gate').hidden = false;
    $('signin').hidden = true;
    $('api-off').hidden = false;
    $('api-off-message').textContent = message;
  }

  function showApp() {
    $('gate').hidden = true;
    $('app').hidden = false;
  }

  $('signin').addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = $('signin-token').value.trim();
    if (!token) return;
    $('signin-submit').disabled = true;
    state.token = token;
    try {
      await api('/admin/api/stats');  // check the token before showing anything
      sessionStorage.setItem(TOKEN_KEY, token);
      state.verified = true;
      start();
    } catch (err) {
      if (err instanceof AuthError) showGate('Wrong token');
      else if (err instanceof ApiOffError) showApiOff(err.message);
      else { $('signin-error').hidden = false; $('signin-error').textContent = err.message; $('signin-submit').disabled = false; }
    }
  });

  $('api-off-retry').addEventListener('click', () => (state.token ? start() : showGate()));
  $('signout').addEventListener('click', () => showGate());

  // ---- polling ------------------------------------------------------------------------------

  function start() {
    showApp();
    state.rendered = {};
    state.started = true;
    refresh();
  }

  function stopPolling() {
    state.started = false;
    clearTimeout(state.timer);
    state.timer = null;
  }

  function schedule() {
    clearTimeout(state.timer);
    // While the tab is hidden nothing is fetched; visibilitychange picks up again.
    if (state.started && !document.hidden) state.timer = setTimeout(refresh, POLL_MS);
  }

  document.addEventListener('visibilitychange', () => {
    if (!state.started) return;
    if (document.hidden) { clearTimeout(state.timer); updateRefreshText(); }
    else refresh();
  });

  async function refresh() {
    if (!state.token) return;
    if (state.inflight) { state.again = true; return; }  // an action asked for fresh data mid-poll
    state.inflight = true;
    state.again = false;
    clearTimeout(state.timer);
    try {
      // The first call after a sign-in goes alone: a stale token then costs one 401, not seven.
      if (!state.verified) { await api('/admin/api/stats'); state.verified = true; }
      const sent = Date.now();
      let received = sent;
      // The stats call is timed alone: its midpoint is when the database read its clock.
      const timedStats = api('/admin/api/stats').then((r) => { received = Date.now(); return r; });
      const list = (query) => api(`/admin/api/bursts?${query}`).then((r) => r.bursts);
      const [stats, active, processing, retrying, failed, completed, cancelled] = await Promise.all([
        timedStats,
        list('state=active&limit=50'),
        list('state=processing&limit=50'),
        list('state=retrying&limit=50'),
        list('state=failed&limit=50'),
        list('state=completed&limit=20'),
        list('state=cancelled&limit=20'),
      ]);
      // stats.now is the database clock: countdowns are measured against it, not this machine's.
      const dbNow = parseTime(stats.now);
      if (Number.isFinite(dbNow)) state.offset = dbNow - (sent + received) / 2;

      renderStats(stats);
      renderSection('waiting', active, waitingRow,
        'Nothing waiting — every conversation is answered', true);
      // Retrying bursts first: they are the ones in trouble.
      renderSection('processing', [...retrying, ...processing], processingRow,
        'Nothing being answered right now', true);
      renderSection('failed', failed, failedRow, 'No failed bursts — nothing needs a retry', true);
      const finishedAt = (b) => parseTime(b.completed_at || b.cancelled_at || b.created_at) || 0;
      const recent = [...completed, ...cancelled].sort((a, b) => finishedAt(b) - finishedAt(a)).slice(0, 20);
      renderSection('recent', recent, recentRow, 'No answered or cancelled bursts yet', false);

      if (state.drawerId != null) await loadDrawer();
      state.lastOk = Date.now();
      state.failing = false;
    } catch (err) {
      if (err instanceof AuthError || err instanceof ApiOffError) { state.inflight = false; handleError(err); return; }
      if (!state.failing) toast(`Refresh failed: ${err.message}`, 'error');
      state.failing = true;
    } finally {
      state.inflight = false;
    }
    tick();
    if (state.again) refresh(); else schedule();
  }

  // ---- stats --------------------------------------------------------------------------------

  function renderStats(stats) {
    const t = stats.totals || {};
    const s = stats.settings || {};
    const n = (v) => (v == null ? 0 : v);
    const cards = [
      { key: 'waiting', label: 'Waiting', tone: 'waiting', value: n(t.waiting),
        sub: t.oldest_waiting_seconds != null ? `oldest ${duration(t.oldest_waiting_seconds)}` : 'none right now' },
      { key: 'due_now', label: 'Due now', tone: 'due', value: n(t.due_now), sub: 'quiet window over' },
      { key: 'processing', label: 'Processing', tone: 'processing', value: n(t.processing), sub: 'being answered' },
      { key: 'retrying', label: 'Retrying', tone: 'retrying', value: n(t.retrying), sub: 'after an error' },
      { key: 'oldest_waiting', label: 'Oldest waiting', value: t.oldest_waiting_seconds == null ? '—' : duration(t.oldest_waiting_seconds),
        empty: t.oldest_waiting_seconds == null, sub: s.max_age_seconds ? `max age ${duration(s.max_age_seconds)}` : '' },
      { key: 'failed_24h', label: 'Failed (24\u00a0h)', tone: 'failed', value: n(t.failed_24h),
        sub: `${n(t.failed)} still failed`, alert: n(t.failed) > 0 },
      { key: 'completed', label: 'Answered (1\u00a0h)', tone: 'completed', value: n(t.completed),
        sub: `${n(t.cancelled)} cancelled · ${plural(n(t.messages), 'message')}` },
      { key: 'model_calls', label: 'Model calls (1\u00a0h)', value: n(t.model_calls),
        sub: plural(n(t.discarded_drafts), 'discarded draft') },
      { key: 'lateness', label: 'Reply lateness (1\u00a0h)', empty: t.lateness_p50_seconds == null,
        value: t.lateness_p50_seconds == null ? '—' : seconds(t.lateness_p50_seconds),
        small: t.lateness_p50_seconds == null ? null : `/ ${seconds(t.lateness_p95_seconds)}`,
        sub: `p50 / p95 · ${plural(n(t.replies_last_hour), 'reply', 'replies')}` },
      { key: 'paused', label: 'Paused conversations', value: n(stats.paused_conversations),
        sub: `${plural(n(stats.dead_letters_24h), 'dead letter')} (24 h)` },
    ];
    const json = JSON.stringify(cards);
    if (state.rendered.stats !== json) {
      state.rendered.stats = json;
      $('stats').replaceChildren(...cards.map((c) => el('div', { class: 'stat', data: { stat: c.key, tone: c.tone, alert: c.alert ? 'true' : null } },
        el('div', { class: 'stat-label', text: c.label, title: c.label }),
        el('div', { class: 'stat-value' + (c.empty || c.value === 0 ? ' is-empty' : '') }, String(c.value), c.small ? el('small', { text: ` ${c.small}` }) : null),
        el('div', { class: 'stat-sub', text: c.sub || '\u00a0', title: c.sub || null }))));
    }

    const banner = $('settings-error');
    banner.hidden = !s.error;
    $('settings-error-text').textContent = s.error || '';
    $('settings-line').textContent = s.window_seconds != null
      ? `Quiet window ${duration(s.window_seconds)} · maximum age ${duration(s.max_age_seconds)} · up to ${plural(s.max_messages, 'message')} per burst`
      : '';
  }

  // ---- burst lists --------------------------------------------------------------------------

  function renderSection(name, bursts, makeRow, emptyText, good) {
    const counter = document.querySelector(`[data-count="${name}"]`);
    if (counter) { counter.textContent = bursts.length; counter.classList.toggle('has-items', bursts.length > 0); }
    const json = JSON.stringify(bursts);
    if (state.rendered[name] === json) return;  // unchanged: keep the DOM (and focus) as is
    state.rendered[name] = json;
    const list = $(`list-${name}`);
    if (!bursts.length) {
      list.replaceChildren(el('div', { class: 'empty', data: { empty: name } },
        el('span', { class: 'empty-icon' + (good ? '' : ' neutral'), 'aria-hidden': 'true', text: good ? '✓' : '·' }),
        el('span', { text: emptyText })));
      return;
    }
    list.replaceChildren(...bursts.map(makeRow));
  }

  /** The parts every row shares: title line (conversation, meta, badges) and the preview. */
  function rowShell(b, { badges = [], timing, actions = [], extra = [] }) {
    const open = () => openDrawer(b.id);
    const row = el('article', {
      class: 'burst' + (actions.length ? '' : ' no-actions'), data: { burstId: b.id, state: b.state },
      on: { click: (e) => { if (!e.target.closest('button, a')) open(); } },
    },
    el('div', { class: 'burst-main' },
      el('div', { class: 'burst-title-row' },
        el('button', { class: 'burst-title', type: 'button', text: `Conversation ${b.conversation_id}`, on: { click: open } }),
        el('span', { class: 'burst-meta', text: `${b.channel} · account ${b.account_id} · #${b.id}` }),
        ...badges),
      el('div', { class: 'burst-preview' },
        el('span', { class: 'msg-count', text: plural(b.message_count || 0, 'message') }),
        b.preview ? el('span', { class: 'quote', text: b.preview }) : el('span', { class: 'faint', text: 'no text' }))),
    el('div', { class: 'burst-timing' }, ...timing),
    el('div', { class: 'burst-actions' }, ...actions),
    ...extra);
    return row;
  }

  /** "12 s ago", kept current by tick(). */
  function since(iso, cls, prefix = '') {
    return el('div', { class: `${cls} ago`, data: { since: iso, prefix }, text: prefix + ago(iso) });
  }

  function countdown(kind, iso, cls) {
    return el('div', { class: `countdown ${cls}`, data: { due: iso, kind } });
  }

  function waitingRow(b) {
    return rowShell(b, {
      timing: [countdown('due', b.due_at, 'timing-main'), countdown('maxage', b.max_age_at, 'timing-sub')],
      actions: [
        actionButton('Answer now', 'btn btn-primary btn-sm answer-now', () => answerNow(b)),
        actionButton('Cancel', 'btn btn-sm cancel', () => cancelWaiting(b), 'Cancel?'),
      ],
      extra: [el('div', { class: 'progress', 'aria-hidden': 'true' },
        el('div', { class: 'progress-bar', data: { start: b.last_message_at || b.first_message_at, end: b.due_at } }))],
    });
  }

  function processingRow(b) {
    const retrying = b.state === 'retrying';
    return rowShell(b, {
      badges: [badge(b.state, STATE_LABEL[b.state] || b.state), b.attempts ? badge('cancelled', `attempt ${b.attempts}`) : null],
      timing: retrying
        ? [countdown('retry', b.due_at, 'timing-main'), el('div', { class: 'timing-sub', text: plural(b.attempts || 0, 'attempt') + ' so far' })]
        : [b.lease_expires_at ? countdown('lease', b.lease_expires_at, 'timing-main') : el('div', { class: 'timing-main', text: 'answering…' }),
          since(b.last_message_at, 'timing-sub', 'last message ')],
      extra: retrying && b.last_error ? [errorBlock(b.last_error)] : [],
    });
  }

  function failedRow(b) {
    return rowShell(b, {
      badges: [badge('failed', plural(b.attempts || 0, 'attempt'))],
      timing: [el('div', { class: 'timing-main', text: 'Failed' }),
        since(b.completed_at || b.last_message_at, 'timing-sub')],
      actions: [actionButton('Retry', 'btn btn-sm retry', () => retry(b))],
      extra: [errorBlock(b.last_error || 'no error recorded')],
    });
  }

  // The clamp sits on an inner span: on the padded box it would show a sliver of a fourth line.
  const errorBlock = (text) => el('div', { class: 'burst-error', title: text }, el('span', { text }));

  function recentRow(b) {
    const tone = b.state === 'cancelled' ? 'cancelled' : (b.outcome || 'completed');
    const label = b.state === 'cancelled' ? 'Cancelled' : (OUTCOME[b.outcome] || STATE_LABEL[b.state] || b.state);
    const when = b.completed_at || b.cancelled_at;
    const extraBadges = [];
    if (b.discarded_drafts) extraBadges.push(badge('cancelled', plural(b.discarded_drafts, 'discarded draft')));
    return rowShell(b, {
      badges: [badge(tone, label), ...extraBadges],
      timing: [el('div', { class: 'timing-main', text: clock(when), title: when || '' }),
        el('div', { class: 'timing-sub', text: b.state === 'cancelled' ? (b.cancel_reason || 'cancelled') : plural(b.model_calls || 0, 'model call') })],
    });
  }

  /** A button that runs an async action once; `confirmLabel` asks for a second click first. */
  function actionButton(label, cls, run, confirmLabel) {
    let armed = false;
    let disarm = null;
    const button = el('button', { class: cls, type: 'button', text: label });
    button.addEventListener('click', async (event) => {
      event.stopPropagation();
      if (confirmLabel && !armed) {
        armed = true;
        button.textContent = confirmLabel;
        button.classList.add('btn-danger');
        disarm = setTimeout(() => { armed = false; button.textContent = label; button.classList.remove('btn-danger'); }, 3000);
        return;
      }
      clearTimeout(disarm);
      button.disabled = true;
      try { await run(); } finally { button.disabled = false; armed = false; button.textContent = label; button.classList.remove('btn-danger'); }
    });
    return button;
  }

  // ---- actions ------------------------------------------------------------------------------

  async function act(run, context) {
    try {
      const result = await run();
      state.rendered = {};   // redraw everything with what the action changed
      state.drawerJson = '';
      refresh();
      return result;
    } catch (err) {
      handleError(err, context);
      return null;
    }
  }

  async function answerNow(b) {
    const r = await act(() => api(conversationPath(b) + '/answer-now', { method: 'POST' }), 'Answer now');
    if (r) toast(r.outcome === 'answering' ? `Answering conversation ${b.conversation_id} now` : `Nothing waiting in conversation ${b.conversation_id}`, r.outcome === 'answering' ? 'ok' : 'info');
  }

  async function cancelWaiting(b) {
    const r = await act(() => api(conversationPath(b) + '/cancel', { method: 'POST' }), 'Cancel');
    if (r) toast(r.outcome === 'cancelled' ? `Cancelled ${plural(r.cancelled || 1, 'waiting burst')} in conversation ${b.conversation_id}` : `Nothing waiting in conversation ${b.conversation_id}`, r.outcome === 'cancelled' ? 'ok' : 'info');
  }

  async function retry(b) {
    const r = await act(() => api(`/admin/api/bursts/${encodeURIComponent(b.id)}/retry`, { method: 'POST' }), 'Retry');
    if (r) toast(r.outcome === 'retried' ? `Burst #${b.id} queued for another attempt` : `Burst #${b.id} is no longer failed (${r.status})`, r.outcome === 'retried' ? 'ok' : 'info');
  }

  async function pause(b, secondsOrNull) {
    const r = await act(() => api(conversationPath(b) + '/pause', { method: 'POST', body: { seconds: secondsOrNull } }), 'Pause');
    if (r) {
      const span = secondsOrNull ? `for ${duration(secondsOrNull)}` : 'until resumed';
      toast(`Bot paused in conversation ${b.conversation_id} ${span}` + (r.cancelled ? ` · ${plural(r.cancelled, 'waiting burst')} cancelled` : ''));
    }
  }

  async function resume(b) {
    const r = await act(() => api(conversationPath(b) + '/resume', { method: 'POST' }), 'Resume');
    if (r) toast(r.outcome === 'resumed' ? `Bot resumed in conversation ${b.conversation_id}` : `Conversation ${b.conversation_id} was not paused`, r.outcome === 'resumed' ? 'ok' : 'info');
  }

  // ---- countdowns: every second, from the server-corrected clock ----------------------------

  const COUNTDOWN_TEXT = {
    due: (s) => (s > 0 ? `answers in ${duration(s)}` : 'due now'),
    maxage: (s) => (s > 0 ? `at the latest in ${duration(s)}` : 'maximum age reached'),
    lease: (s) => (s > 0 ? `lease ${duration(s)} left` : 'lease expired'),
    retry: (s) => (s > 0 ? `next attempt in ${duration(s)}` : 'retrying now'),
    until: (s) => (s > 0 ? `in ${duration(s)}` : 'now'),
  };

  function tick() {
    const now = serverNow();
    for (const node of document.querySelectorAll('.countdown[data-due]')) {
      const due = parseTime(node.dataset.due);
      if (!Number.isFinite(due)) { node.textContent = '—'; continue; }
      const left = Math.ceil((due - now) / 1000);
      node.textContent = (COUNTDOWN_TEXT[node.dataset.kind] || COUNTDOWN_TEXT.until)(left);
      node.dataset.overdue = left <= 0 ? 'true' : 'false';
      if (node.dataset.kind === 'due') node.closest('.burst')?.classList.toggle('is-due', left <= 0);
    }
    for (const bar of document.querySelectorAll('.progress-bar[data-end]')) {
      const start = parseTime(bar.dataset.start);
      const end = parseTime(bar.dataset.end);
      const fraction = end > start ? (now - start) / (end - start) : 1;
      bar.style.width = `${Math.min(100, Math.max(0, fraction * 100)).toFixed(1)}%`;
    }
    for (const node of document.querySelectorAll('.ago[data-since]')) node.textContent = (node.dataset.prefix || '') + ago(node.dataset.since);
    updateRefreshText();
  }

  function updateRefreshText() {
    const node = $('refresh');
    let health = 'live';
    let parts;
    if (document.hidden) { health = 'paused'; parts = ['Paused while hidden']; }
    else if (state.failing) { health = 'error'; parts = ['Connection problem, retrying…']; }
    else if (!state.lastOk) parts = ['Connecting…'];
    else {
      const s = Math.round((Date.now() - state.lastOk) / 1000);
      // "updated " is dropped on a phone (CSS) to keep the bar on one line
      parts = ['Live · ', el('span', { class: 'refresh-long', text: 'updated ' }), s < 2 ? 'just now' : `${s} s ago`];
    }
    node.dataset.health = health;
    $('refresh-text').replaceChildren(...parts);
  }

  setInterval(tick, 1000);

  // ---- detail drawer ------------------------------------------------------------------------

  function openDrawer(id) {
    state.drawerId = id;
    state.drawerJson = '';
    $('drawer-title').textContent = `Burst #${id}`;
    $('drawer-badge').hidden = true;
    $('drawer-body').replaceChildren(el('div', { class: 'skeleton' }, el('i'), el('i'), el('i')));
    $('drawer').hidden = false;
    $('drawer-backdrop').hidden = false;
    document.body.classList.add('drawer-open');
    history.replaceState(null, '', `${location.pathname}${location.search}#burst=${id}`);
    $('drawer-close').focus();
    loadDrawer();
  }

  function closeDrawer() {
    if (state.drawerId == null) return;
    state.drawerId = null;
    $('drawer').hidden = true;
    $('drawer-backdrop').hidden = true;
    document.body.classList.remove('drawer-open');
    history.replaceState(null, '', location.pathname + location.search);
  }

  $('drawer-close').addEventListener('click', closeDrawer);
  $('drawer-backdrop').addEventListener('click', closeDrawer);
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') closeDrawer(); });

  async function loadDrawer() {
    const id = state.drawerId;
    let burst;
    try {
      burst = await api(`/admin/api/bursts/${encodeURIComponent(id)}`);
    } catch (err) {
      if (err instanceof AuthError || err instanceof ApiOffError) throw err;
      if (id === state.drawerId && !state.drawerJson) {
        $('drawer-body').replaceChildren(el('div', { class: 'empty' }, el('span', { text: `Could not load burst #${id}: ${err.message}` })));
      }
      return;
    }
    if (id !== state.drawerId) return;  // closed or switched while loading
    const json = JSON.stringify(burst);
    if (json === state.drawerJson) return;
    state.drawerJson = json;
    const body = $('drawer-body');
    const scroll = body.scrollTop;
    renderDrawer(burst);
    body.scrollTop = scroll;
    tick();
  }

  function renderDrawer(b) {
    const conv = b.conversation || {};
    const badgeNode = $('drawer-badge');
    badgeNode.hidden = false;
    badgeNode.dataset.tone = b.state;
    badgeNode.textContent = STATE_LABEL[b.state] || b.state;

    // summary: which conversation, its timing, and what an operator can do about it
    const timing = [];
    if (b.state === 'active') {
      timing.push(el('span', {}, countdown('due', b.due_at, 'inline')), el('span', {}, countdown('maxage', b.max_age_at, 'inline')));
    } else if (b.state === 'retrying') {
      timing.push(el('span', {}, countdown('retry', b.due_at, 'inline')));
    } else if (b.state === 'processing' && b.lease_expires_at) {
      timing.push(el('span', {}, countdown('lease', b.lease_expires_at, 'inline')));
    }
    timing.push(el('span', { text: plural(b.message_count || 0, 'message') }), el('span', { text: plural(b.attempts || 0, 'attempt') }));

    const paused = conv.paused;
    // The action that fits this burst's state comes first and is the primary one.
    const failed = b.state === 'failed';
    const actions = el('div', { class: 'd-actions' },
      failed ? actionButton('Retry', 'btn btn-primary btn-sm retry', () => retry(b)) : null,
      actionButton('Answer now', `btn ${b.state === 'active' ? 'btn-primary ' : ''}btn-sm answer-now`, () => answerNow(b)),
      actionButton('Cancel waiting', 'btn btn-sm cancel', () => cancelWaiting(b), 'Cancel waiting?'),
      paused ? actionButton('Resume bot', 'btn btn-primary btn-sm resume', () => resume(b))
        : [actionButton('Pause bot 1 h', 'btn btn-sm pause-hour', () => pause(b, 3600)),
          actionButton('Pause until resumed', 'btn btn-sm pause-indefinitely', () => pause(b, null))]);

    const summary = el('div', { class: 'd-summary' },
      el('div', { class: 'd-conv' },
        el('strong', { text: `Conversation ${b.conversation_id}` }),
        el('span', { class: 'muted', text: `${b.channel} · account ${b.account_id}` }),
        b.outcome ? badge(b.outcome, OUTCOME[b.outcome] || b.outcome) : null,
        paused ? badge('paused', 'Bot paused') : null),
      el('div', { class: 'd-timing' }, ...timing),
      paused ? el('div', { class: 'd-pause-note', text: pauseText(conv) }) : null,
      actions);

    const sections = [summary];

    if (b.last_error) sections.push(section('Last error', el('div', { class: 'd-error', text: b.last_error })));
    if (b.handoff_reason) sections.push(section('Handed off', el('div', { class: 'd-none', text: b.handoff_reason })));
    sections.push(section('Conversation', chat(b)));
    sections.push(section('Timeline', facts(b)));
    sections.push(section('Attempt errors', (b.attempt_errors || []).length
      ? el('ol', { class: 'attempts' }, ...b.attempt_errors.map((a) => el('li', {},
        el('div', { class: 'attempt-head' }, el('strong', { text: `Attempt ${a.attempt}` }), el('span', { text: clock(a.at), title: a.at || '' })),
        el('div', { class: 'attempt-error', text: a.error || '' }))))
      : el('p', { class: 'd-none', text: 'No failed attempts.' })));
    sections.push(section('Operator actions', (b.actions || []).length
      ? el('ul', { class: 'audit' }, ...b.actions.map((a) => el('li', {},
        el('div', { class: 'audit-head' },
          el('span', {}, el('strong', { text: a.actor || '?' }), ` ${humanAction(a.action)}`, a.via ? ` via ${a.via}` : ''),
          el('span', { text: clock(a.at), title: a.at || '' })),
        (a.outcome || a.detail) ? el('div', { class: 'audit-detail', text: [a.outcome, detailText(a.detail)].filter(Boolean).join(' · ') }) : null)))
      : el('p', { class: 'd-none', text: 'No operator has touched this conversation.' })));

    $('drawer-body').replaceChildren(...sections);
  }

  const ACTION_TEXT = { pause: 'paused the bot', resume: 'resumed the bot', retry: 'retried', answer_now: 'asked to answer now', cancel: 'cancelled waiting' };
  const humanAction = (action) => ACTION_TEXT[action] || String(action || '').replace(/_/g, ' ');
  function detailText(detail) {
    if (detail == null || detail === '') return '';
    return typeof detail === 'string' ? detail : JSON.stringify(detail);
  }

  function pauseText(conv) {
    // "until resumed" comes back as infinity (or the year 9999): no time to show.
    const t = parseTime(conv.bot_paused_until);
    const until = Number.isFinite(t) && new Date(t).getFullYear() < 3000 ? `until ${clock(conv.bot_paused_until)}` : 'until resumed';
    return `The bot is paused here ${until}${conv.pause_reason ? ` (${conv.pause_reason})` : ''}: new messages are not answered.`;
  }

  function section(title, content) {
    return el('section', { class: 'd-section' }, el('h3', { text: title }), content);
  }

  function facts(b) {
    const rows = [
      ['First message', clock(b.first_message_at)],
      ['Last message', clock(b.last_message_at)],
      ['Due', b.state === 'active' || b.state === 'retrying' ? clock(b.due_at) : '—'],
      ['Answered at the latest', clock(b.max_age_at)],
      ['Completed', b.completed_at ? clock(b.completed_at) : '—'],
      ['Reply sent', b.reply_sent_at ? clock(b.reply_sent_at) : '—'],
      ['Model calls', String(b.model_calls ?? 0)],
      ['Discarded drafts', String(b.discarded_drafts ?? 0)],
    ];
    if (b.cancelled_at) rows.push(['Cancelled', `${clock(b.cancelled_at)}${b.cancel_reason ? ` · ${b.cancel_reason}` : ''}`]);
    return el('dl', { class: 'facts' }, ...rows.map(([k, v]) => el('div', {}, el('dt', { text: k }), el('dd', { text: v }))));
  }

  /** Earlier bursts dimmed, then this burst's messages and its reply. */
  function chat(b) {
    const nodes = [];
    for (const past of b.history || []) {
      nodes.push(el('div', { class: 'chat-divider', text: `Burst #${past.id} · ${OUTCOME[past.outcome] || STATE_LABEL[past.state] || past.state} · ${clock(past.first_message_at)}` }));
      nodes.push(...messageBubbles(past.messages, true));
      if (past.reply) nodes.push(botBubble(past.reply, past.reply_sent_at || past.completed_at, true));
    }
    nodes.push(el('div', { class: 'chat-divider current', text: `This burst #${b.id} · ${plural(b.message_count || (b.messages || []).length, 'message')}` }));
    nodes.push(...messageBubbles(b.messages, false));
    if (b.reply) nodes.push(botBubble(b.reply, b.reply_sent_at || b.completed_at, false));
    else nodes.push(noReplyNote(b));
    return el('div', { class: 'chat' }, ...nodes);
  }

  function noReplyNote(b) {
    const text = {
      active: 'Waiting for the customer to go quiet…',
      processing: 'Writing the reply…',
      retrying: 'The reply failed; another attempt is scheduled.',
      failed: 'No reply: every attempt failed.',
      cancelled: `Cancelled${b.cancel_reason ? `: ${b.cancel_reason}` : ''}. No reply.`,
    }[b.state] || (b.outcome === 'handed_off' ? 'Handed off to a human. No reply.' : 'No reply was sent.');
    return el('div', { class: 'chat-note', text });
  }

  /** A run of messages from one author gets one caption, under its last bubble. */
  function messageBubbles(messages, past) {
    const list = messages || [];
    const authorOf = (m) => (m && m.author === 'agent' ? 'agent' : 'customer');
    return list.map((m, i) => messageBubble(m, past, i === list.length - 1 || authorOf(list[i + 1]) !== authorOf(m)));
  }

  function messageBubble(m, past, caption) {
    const author = m.author === 'agent' ? 'agent' : 'customer';
    const content = m.content == null || m.content === ''
      ? el('span', { class: 'no-text', text: (m.attachments || []).length ? '' : '(no text)' })
      : m.content;
    const files = (m.attachments || []).map((a) => {
      const label = `📎 ${a.file_type || 'file'}`;
      const url = typeof a.data_url === 'string' && /^https?:\/\//i.test(a.data_url) ? a.data_url : null;  // never javascript: or data:
      return url ? el('a', { class: 'attachment', href: url, target: '_blank', rel: 'noopener noreferrer', text: label }) : el('span', { class: 'attachment', text: label });
    });
    return el('div', { class: 'bubble-row' + (past ? ' past' : ''), data: { author } },
      el('div', { class: 'd-bubble' }, content, files.length ? el('div', { class: 'attachments' }, ...files) : null),
      caption ? el('div', { class: 'bubble-meta', text: `${author === 'agent' ? 'Agent' : 'Customer'} · ${clock(m.sent_at || m.received_at)}` }) : null);
  }

  function botBubble(text, at, past) {
    return el('div', { class: 'bubble-row' + (past ? ' past' : ''), data: { author: 'bot' } },
      el('div', { class: 'd-bubble', text }),
      el('div', { class: 'bubble-meta', text: `chatbuffer${at ? ` · ${clock(at)}` : ''}` }));
  }

  // ---- actor name ---------------------------------------------------------------------------

  const actorInput = $('actor');
  state.actor = localStorage.getItem(ACTOR_KEY) || 'admin';
  actorInput.value = state.actor;
  actorInput.addEventListener('input', () => {
    state.actor = actorInput.value.trim() || 'admin';
    localStorage.setItem(ACTOR_KEY, state.actor);
  });

  // ---- boot ---------------------------------------------------------------------------------

  // A token in the fragment (#token=…) is taken once, then removed from the address bar and history.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has('token')) {
    const token = fragment.get('token').trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, '', location.pathname + location.search);
  }
  state.token = sessionStorage.getItem(TOKEN_KEY);
  if (state.token) {
    start();
    const deepLink = Number(fragment.get('burst'));
    if (Number.isInteger(deepLink) && deepLink > 0) openDrawer(deepLink);
  } else {
    showGate();
  }
})();
