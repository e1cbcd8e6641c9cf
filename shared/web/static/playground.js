/* chatbuffer playground: a customer's side of a chat. Messages go through the real webhook path;
   the page polls the conversation every second and draws it from the server's list. Text is
   always set with textContent: it is whatever someone typed. */
'use strict';

(() => {
  const POLL_MS = 1000;
  const CONVERSATION_KEY = 'chatbuffer.playground.conversation';
  const STORED = new Set(['buffered', 'held', 'duplicate']);  // webhook answers that mean "it is in the database"

  const state = {
    conversationId: null,
    view: null,          // the last GET /playground/api/conversations/{id}
    offset: 0,           // database clock minus local clock (ms)
    pending: [],         // local messages not yet in `view`: {key, text, status, after, note}
    nextLocal: 1,
    pollSeq: 0,          // number of the last poll started
    inflight: false,
    timer: null,
    online: true,
    sendChain: Promise.resolve(),  // POSTs one after another, so the server gets them in order
    renderedJson: '',
    seen: new Set(),     // keys already drawn: only new bubbles animate
    firstRender: true,
  };

  const { $, el, parseTime } = window.chatbufferPage;  // common.js
  const serverNow = () => Date.now() + state.offset;
  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
  const dayFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: 'numeric', minute: '2-digit' });
  function clock(iso) {
    const t = parseTime(iso);
    if (!Number.isFinite(t)) return '';
    const d = new Date(t);
    return (d.toDateString() === new Date().toDateString() ? timeFmt : dayFmt).format(d);
  }
  const plural = (n, one, many = one + 's') => `${n} ${n === 1 ? one : many}`;
  function duration(s) {
    s = Math.max(0, Math.ceil(s));
    return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  }

  function toast(message, tone = 'info') {
    const node = el('div', { class: 'toast', data: { tone }, role: 'status', text: message });
    $('toasts').append(node);
    setTimeout(() => { node.classList.add('leaving'); setTimeout(() => node.remove(), 250); }, 3200);
  }

  // ---- conversation id ----------------------------------------------------------------------

  function randomConversationId() {
    const buf = new Uint32Array(1);
    crypto.getRandomValues(buf);
    return (buf[0] % 2147483647) + 1;  // 1 .. 2^31-1: fits Chatwoot's integer ids
  }

  function setConversation(id) {
    state.conversationId = id;
    localStorage.setItem(CONVERSATION_KEY, String(id));
    $('conversation-id').textContent = `#${id}`;
    state.view = null;
    state.pending = [];
    state.renderedJson = '';
    state.seen = new Set();
    state.firstRender = true;
    render();
  }

  const stored = Number(localStorage.getItem(CONVERSATION_KEY));
  setConversation(Number.isInteger(stored) && stored > 0 && stored < 2 ** 31 ? stored : randomConversationId());

  for (const button of document.querySelectorAll('.new-conversation')) {
    button.addEventListener('click', () => {
      setConversation(randomConversationId());
      toast(`New conversation #${state.conversationId}`);
      $('composer').focus();
      pollNow();
    });
  }

  // ---- polling ------------------------------------------------------------------------------

  function schedule() {
    clearTimeout(state.timer);
    if (!document.hidden) state.timer = setTimeout(poll, POLL_MS);
  }
  function pollNow() { clearTimeout(state.timer); poll(); }

  document.addEventListener('visibilitychange', () => { if (!document.hidden) pollNow(); else clearTimeout(state.timer); });

  async function poll() {
    if (state.inflight) return;
    state.inflight = true;
    const seq = ++state.pollSeq;
    const id = state.conversationId;
    const sent = Date.now();
    try {
      const response = await fetch(`/playground/api/conversations/${id}`, { cache: 'no-store' });
      const data = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
      if (id !== state.conversationId) return;  // a new conversation was started meanwhile
      const dbNow = parseTime(data.now);
      if (Number.isFinite(dbNow)) state.offset = dbNow - (sent + Date.now()) / 2;
      state.view = data;
      // A message whose POST was answered before this poll started is in `data` now: the server's
      // copy replaces the local one, so nothing is shown twice.
      state.pending = state.pending.filter((p) => !(p.status === 'stored' && seq > p.after));
      if (!state.online) toast('Connected again', 'ok');
      state.online = true;
      render();
    } catch (err) {
      if (state.online) toast(`Cannot reach chatbuffer (${err.message}); retrying…`, 'error');
      state.online = false;
    } finally {
      state.inflight = false;
      schedule();
    }
  }

  // ---- sending ------------------------------------------------------------------------------

  const composer = $('composer');
  const sendButton = $('send');

  function autosize() {
    composer.style.height = 'auto';
    composer.style.height = `${Math.min(composer.scrollHeight + 2, 140)}px`;
    sendButton.disabled = !composer.value.trim();
  }
  composer.addEventListener('input', autosize);
  composer.addEventListener('keydown', (event) => {
    // Enter sends, Shift+Enter is a new line; never while an input method is composing a character.
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  $('composer-form').addEventListener('submit', (event) => { event.preventDefault(); submit(); });

  function submit() {
    const text = composer.value.trim();
    if (!text) return;
    composer.value = '';
    autosize();
    composer.focus();
    // The conversation is the one on screen when Enter was pressed, even if "New" is clicked
    // before the queued send goes out.
    const message = { key: `local-${state.nextLocal++}`, text, status: 'sending', after: Infinity, note: null,
                      conversationId: state.conversationId };
    state.pending.push(message);
    render({ scroll: true });
    queue(message);
  }

  function queue(message) {
    state.sendChain = state.sendChain.then(() => post(message));
  }

  async function post(message) {
    const id = message.conversationId;
    try {
      let response;
      try {
        response = await fetch('/playground/api/messages', {
          method: 'POST', headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ conversation_id: id, text: message.text }),
        });
      } catch (_) {
        throw new Error('no connection');
      }
      const data = await response.json().catch(() => ({}));
      if (response.status >= 400 && response.status < 500) {
        // the server refused this text: sending it again would not help
        message.status = 'refused';
        message.note = `Not sent: ${data.error || `HTTP ${response.status}`}`;
      } else if (!response.ok) {
        throw new Error(data.error || `HTTP ${response.status}`);
      } else if (STORED.has(data.status)) {
        message.status = 'stored';
        message.after = state.pollSeq;  // the next poll to start will carry it
      } else {
        message.status = 'refused';
        message.note = `Not buffered (${data.status}${data.reason ? `: ${data.reason}` : ''})`;
      }
    } catch (err) {
      message.status = 'failed';
      message.note = `Not sent: ${err.message}. Tap to retry`;
    }
    if (id !== state.conversationId) return;
    render();
    if (message.status === 'stored') pollNow();  // show the countdown without waiting a second
  }

  function retryMessage(key) {
    const message = state.pending.find((p) => p.key === key);
    if (!message || message.status !== 'failed') return;
    message.status = 'sending';
    message.note = null;
    render();
    queue(message);
  }

  // ---- drawing ------------------------------------------------------------------------------

  /** What the thread shows, as plain data: compared with the last one to skip needless redraws. */
  function items() {
    const out = [];
    const bursts = (state.view && state.view.bursts) || [];
    for (const b of bursts) {
      for (const m of b.messages || []) {
        const files = (m.attachments || []).map((a) => `📎 ${a.file_type || 'file'}`).join('  ');
        const text = [m.content, files].filter(Boolean).join('\n') || '(no text)';
        out.push({ kind: 'msg', key: `m-${m.external_id}`, author: m.author === 'agent' ? 'agent' : 'customer', text, at: m.sent_at });
      }
      if (b.reply) {
        out.push({ kind: 'reply', key: `r-${b.id}`, text: b.reply, count: b.message_count, at: b.reply_sent_at || b.completed_at });
      } else if (b.state === 'cancelled') {
        out.push({ kind: 'note', key: `n-${b.id}`, text: `Not answered${b.cancel_reason ? `: ${b.cancel_reason}` : ''}` });
      } else if (b.state === 'failed') {
        out.push({ kind: 'note', key: `n-${b.id}`, tone: 'error', text: 'The reply failed. Retry it from the inspector.' });
      } else if (b.state === 'completed') {
        out.push({ kind: 'note', key: `n-${b.id}`, text: b.outcome === 'handed_off'
          ? `Handed off to a person${b.handoff_reason ? `: ${b.handoff_reason}` : ''}` : 'No reply needed for these messages' });
      }
    }
    for (const p of state.pending) out.push({ kind: 'msg', key: p.key, author: 'customer', text: p.text, pending: p.status, note: p.note });
    const last = bursts[bursts.length - 1];
    if (last && (last.state === 'processing' || last.state === 'retrying') && !state.pending.some((p) => p.status !== 'failed' && p.status !== 'refused')) {
      out.push({ kind: 'typing', key: `t-${last.id}` });
    }
    return out;
  }

  function render({ scroll = false } = {}) {
    renderChrome();
    const list = items();
    const json = JSON.stringify(list);
    if (json === state.renderedJson && !scroll) return;
    state.renderedJson = json;

    const box = $('messages');
    const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 120;
    $('empty-chat').hidden = list.length > 0;
    const animate = (item) => !state.firstRender && !state.seen.has(item.key) && (item.kind === 'reply' || item.pending);

    const nodes = [];
    list.forEach((item, i) => {
      const prev = list[i - 1];
      const next = list[i + 1];
      const sameAs = (other) => other && other.kind === 'msg' && other.author === item.author;
      if (item.kind === 'msg') {
        const bubble = el('div', {
          class: 'bubble' + (sameAs(prev) ? '' : ' grp-first') + (sameAs(next) ? '' : ' grp-last') + (animate(item) ? ' enter' : ''),
          data: { author: item.author, pending: item.pending || null, key: item.key }, text: item.text,
        });
        if (item.pending === 'failed') {
          bubble.title = 'Tap to send again';
          bubble.addEventListener('click', () => retryMessage(item.key));
        }
        nodes.push(bubble);
        if (item.note) nodes.push(el('div', { class: 'meta error', data: { author: item.author }, text: item.note }));
        else if (!sameAs(next)) {
          nodes.push(el('div', { class: 'meta', data: { author: item.author },
            text: item.pending ? (item.pending === 'stored' ? 'Delivered' : 'Sending…') : `${item.author === 'agent' ? 'Agent · ' : ''}${clock(item.at)}` }));
        }
      } else if (item.kind === 'reply') {
        nodes.push(el('div', { class: 'bot-label' }, el('span', { class: 'brand-mark', 'aria-hidden': 'true' }), 'chatbuffer'));
        nodes.push(el('div', { class: 'bubble' + (animate(item) ? ' enter' : ''), data: { author: 'bot', burstId: item.key.slice(2) }, text: item.text }));
        nodes.push(el('div', { class: 'meta', data: { author: 'bot' },
          text: `${item.count > 1 ? `one reply to ${item.count} messages` : 'reply'} · ${clock(item.at)}` }));
      } else if (item.kind === 'note') {
        nodes.push(el('div', { class: 'chat-note', data: { tone: item.tone || null }, text: item.text }));
      } else if (item.kind === 'typing') {
        nodes.push(el('div', { class: 'typing', 'aria-label': 'chatbuffer is typing' },
          el('span', { class: 'dots', 'aria-hidden': 'true' }, el('i'), el('i'), el('i'))));
      }
    });
    $('thread').replaceChildren(...nodes);
    for (const item of list) state.seen.add(item.key);
    state.firstRender = false;
    if (scroll || nearBottom) box.scrollTop = box.scrollHeight;
  }

  /** Everything around the thread: notices, the header line, the countdown pill. */
  function renderChrome() {
    const view = state.view;
    $('model-notice').hidden = !(view && view.model === 'placeholder');

    const pause = $('pause-notice');
    pause.hidden = !(view && view.paused);
    if (view && view.paused) {
      // Paused "until resumed" comes back as infinity (or the year 9999): no time to show.
      const t = parseTime(view.bot_paused_until);
      const until = Number.isFinite(t) && new Date(t).getFullYear() < 3000 ? `until ${clock(view.bot_paused_until)}` : 'until an operator resumes it';
      pause.textContent = `The bot is paused here ${until}${view.pause_reason ? ` (${view.pause_reason})` : ''}. Messages are kept, not answered.`;
    }

    const bursts = (view && view.bursts) || [];
    const open = [...bursts].reverse().find((b) => ['active', 'processing', 'retrying'].includes(b.state));
    const pill = $('burst-status');
    const countdown = pill.querySelector('.countdown');
    if (!open || open.state === 'processing') {
      pill.hidden = true;
      countdown.dataset.due = '';
    } else {
      pill.hidden = false;
      pill.dataset.state = open.state;
      pill.dataset.burstId = open.id;
      countdown.dataset.due = open.due_at || '';
      $('burst-status-count').textContent = open.state === 'active' ? `${plural(open.message_count || 0, 'message')} in this burst` : '';
    }
    const sub = $('chat-sub');
    const mode = view && view.paused ? 'paused' : open ? (open.state === 'active' ? 'waiting' : 'typing') : 'idle';
    sub.dataset.mode = mode;
    sub.textContent = { paused: 'paused by an operator', waiting: 'waiting for you to finish', typing: 'typing…', idle: 'replies once you go quiet' }[mode];
    tick();
  }

  /** The pill's live countdown, against the database clock. */
  function tick() {
    const pill = $('burst-status');
    if (pill.hidden) return;
    const countdown = pill.querySelector('.countdown');
    const due = parseTime(countdown.dataset.due);
    const left = Number.isFinite(due) ? (due - serverNow()) / 1000 : 0;
    const text = $('burst-status-text');
    let mode;
    if (pill.dataset.state === 'retrying') {
      mode = 'retrying';
      text.textContent = 'The reply hit an error; trying again';
      countdown.textContent = left > 0 ? `in ${duration(left)}` : 'now…';
    } else if (left > 0) {
      mode = 'waiting';
      text.textContent = 'chatbuffer is waiting for you to finish…';
      countdown.textContent = `answering in ${duration(left)}`;
    } else {
      mode = 'due';
      text.textContent = 'You went quiet:';
      countdown.textContent = 'answering now…';
    }
    pill.dataset.mode = mode;
  }

  setInterval(tick, 250);  // sub-second, so the seconds flip close to when they change
  autosize();
  poll();
  composer.focus();
})();
