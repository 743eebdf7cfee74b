// csbot console: live updates over server-sent events, unread marks, notifications, saved replies.
// The server renders every piece of HTML (escaped, in the agent's language); this script only
// places it. Its own words come from the page's catalog strings (#console-data), with named
// placeholders filled in here: no sentence is assembled from pieces.
(function () {
  'use strict';

  var data = {};
  var strings = {};

  function format(template, values) {
    return String(template).replace(/%\((\w+)\)s/g, function (_, name) {
      return values && values[name] !== undefined ? String(values[name]) : '';
    });
  }

  function fragment(html) {
    var t = document.createElement('template');
    t.innerHTML = html;  // server-rendered, autoescaped markup
    localizeAll(t.content);
    return t.content;
  }

  function post(url, fields) {
    var body = new URLSearchParams(fields || {});
    body.set('csrf', data.csrf);
    return fetch(url, { method: 'POST', body: body, credentials: 'same-origin',
      headers: { 'X-CSRF-Token': data.csrf } });
  }

  // ---- times: the server sends ISO 8601 with an offset (UTC text as a fallback); every one
  // is shown in this browser's zone, with the full time and the zone's offset on hover.

  function pad(n) { return n < 10 ? '0' + n : String(n); }

  function toDate(at) {
    if (at === null || at === undefined || at === '') return null;
    var d = new Date(at);
    return isNaN(d.getTime()) ? null : d;
  }

  function offset(d) {
    var m = -d.getTimezoneOffset();
    var sign = m >= 0 ? '+' : '-';
    m = Math.abs(m);
    return format('UTC%(sign)s%(h)s:%(m)s', { sign: sign, h: pad(Math.floor(m / 60)), m: pad(m % 60) });
  }

  function when(d) {
    return format('%(y)s-%(mo)s-%(d)s %(h)s:%(mi)s', { y: d.getFullYear(), mo: pad(d.getMonth() + 1),
      d: pad(d.getDate()), h: pad(d.getHours()), mi: pad(d.getMinutes()) });
  }

  function ago(d) {
    var s = Math.max(0, (Date.now() - d.getTime()) / 1000);
    if (s < 60) return strings.just_now;
    if (s < 3600) return format(strings.min_ago, { n: Math.floor(s / 60) });
    if (s < 86400) return format(strings.h_ago, { n: Math.floor(s / 3600) });
    return format(strings.d_ago, { n: Math.floor(s / 86400) });
  }

  function localize(node) {
    var d = toDate(node.getAttribute('datetime'));
    if (!d) return;
    node.textContent = node.getAttribute('data-local') === 'ago' ? ago(d) : when(d);
    node.title = format('%(when)s:%(s)s %(offset)s', { when: when(d), s: pad(d.getSeconds()), offset: offset(d) });
  }

  function localizeAll(root) {
    (root || document).querySelectorAll('time[datetime]').forEach(localize);
  }

  function refreshAgo() {
    document.querySelectorAll('time[data-local="ago"]').forEach(localize);
  }

  // ---- the thread: stay at the bottom, or say that new messages came

  var thread = null;
  var marker = null;

  function atBottom() {
    return thread.scrollHeight - thread.scrollTop - thread.clientHeight < 80;
  }

  function toBottom() {
    thread.scrollTop = thread.scrollHeight;
    if (marker) marker.hidden = true;
    markRead();
  }

  function lastMessageId() {
    var ids = Array.prototype.map.call(thread.querySelectorAll('[data-kind=message][data-id]'),
      function (n) { return parseInt(n.getAttribute('data-id'), 10); });
    return ids.length ? Math.max.apply(null, ids) : 0;
  }

  var readSent = 0;
  function markRead() {
    if (!thread || document.hidden || !atBottom()) return;
    var last = lastMessageId();
    if (last <= readSent) return;
    readSent = last;
    post('/admin/c/' + encodeURIComponent(data.app) + '/' + encodeURIComponent(data.openid) + '/read',
      { last_id: String(last) })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (answer) {
        if (answer) setMyUnread(answer.my_unread);
        var row = findRow(data.app + '/' + data.openid);
        var badge = row && row.querySelector('.count.unread');
        if (badge) badge.remove();
      })
      .catch(function () { readSent = 0; });
  }

  function placeMessage(msg, replace) {
    var old = document.getElementById('m' + msg.id);
    if (old && !replace) return;
    var stick = atBottom();
    var node = fragment(msg.html);
    if (old) { old.replaceWith(node); return; }
    var empty = document.getElementById('empty-thread');
    if (empty) empty.remove();
    thread.appendChild(node);
    if (stick) toBottom();
    else if (msg.inbound && marker) marker.hidden = false;
  }

  // ---- the list, the details pane, the header

  function findRow(key) {
    var found = null;
    document.querySelectorAll('#conv-list li.conv').forEach(function (li) {
      if (li.getAttribute('data-key') === key) found = li;
    });
    return found;
  }

  function updateRow(conv) {
    var list = document.getElementById('conv-list');
    if (!list) return;
    var old = findRow(conv.key);
    if (!conv.row || (!old && (!conv.matches || data.filters.search))) {
      if (old && !conv.row) old.remove();
      return;
    }
    var node = fragment(conv.row).firstElementChild;
    node.classList.add('fresh');
    if (old) old.remove();
    var empty = list.querySelector('li.empty');
    if (empty) empty.remove();
    list.insertBefore(node, list.firstChild);
  }

  function updateOpen(conv) {
    var details = document.getElementById('details-body');
    if (details && conv.details) details.replaceChildren(fragment(conv.details));
    var badge = document.getElementById('conv-status');
    if (badge) {
      badge.textContent = conv.status_label;
      badge.className = 'badge status-' + conv.status;
      badge.setAttribute('data-status', conv.status);
    }
    var agent = document.getElementById('conv-agent');
    if (agent) agent.textContent = conv.assigned_agent || '';
  }

  function setMyUnread(n) {
    var badge = document.getElementById('my-unread');
    if (!badge) return;
    badge.textContent = String(n);
    badge.hidden = !n;
  }

  function setWaiting(n) {
    document.title = n ? format(strings.title_waiting, { n: n }) : strings.title_idle;
  }

  // ---- browser notifications (opt-in)

  var notifyButton = null;
  function notificationsOn() {
    return 'Notification' in window && Notification.permission === 'granted' &&
      localStorage.getItem('csbot-notify') === '1';
  }

  function showNotifyState() {
    if (!notifyButton) return;
    notifyButton.hidden = !('Notification' in window);
    if (!('Notification' in window)) return;
    if (Notification.permission === 'denied') notifyButton.textContent = strings.notify_denied;
    else notifyButton.textContent = notificationsOn() ? strings.notify_on : strings.notify_off;
    notifyButton.setAttribute('aria-pressed', notificationsOn() ? 'true' : 'false');
  }

  function toggleNotifications() {
    if (notificationsOn()) {
      localStorage.setItem('csbot-notify', '0');
      showNotifyState();
      return;
    }
    Notification.requestPermission().then(function (permission) {
      localStorage.setItem('csbot-notify', permission === 'granted' ? '1' : '0');
      showNotifyState();
    });
  }

  function notify(conv) {
    if (!conv.notify || !notificationsOn()) return;
    var text = conv.notify === 'mine' ? strings.notify_mine : strings.notify_new;
    var n = new Notification(format(text, { openid: conv.openid }), { tag: 'csbot-' + conv.key });
    n.onclick = function () {
      window.focus();
      var parts = conv.key.split('/');
      location.href = '/admin/c/' + encodeURIComponent(parts[0]) + '/' +
        encodeURIComponent(parts.slice(1).join('/')) + (data.list_qs || '');
    };
  }

  // ---- saved replies in the composer: "/" + shortcut, or Ctrl+/

  function startComposer(saveDraft) {
    var text = document.getElementById('reply-text');
    var menu = document.getElementById('saved-menu');
    var button = document.getElementById('saved-btn');
    var form = document.getElementById('composer');
    if (!text || !menu) return;
    var active = 0;
    var shown = [];
    // "/" and a shortcut, at the start or after a space or punctuation (not inside a URL)
    var SLASH = /(^|[^\p{L}\p{N}_:\/])\/([\p{L}\p{N}_-]*)$/u;

    function query() {
      var m = SLASH.exec(text.value.slice(0, text.selectionStart));
      return m ? m[2].toLowerCase() : null;
    }

    function close() { menu.hidden = true; shown = []; }

    function open(filter) {
      shown = (data.saved || []).filter(function (r) {
        return !filter || r.shortcut.toLowerCase().indexOf(filter) === 0;
      });
      menu.replaceChildren();
      if (!shown.length) {
        var none = document.createElement('li');
        none.className = 'saved-none';
        none.textContent = strings.no_saved;
        menu.appendChild(none);
      }
      shown.forEach(function (r, i) {
        var li = document.createElement('li');
        li.setAttribute('role', 'option');
        li.setAttribute('data-shortcut', r.shortcut);
        var code = document.createElement('code');
        code.textContent = '/' + r.shortcut;
        var body = document.createElement('span');
        body.textContent = r.text;
        li.appendChild(code);
        li.appendChild(body);
        li.addEventListener('mousedown', function (e) { e.preventDefault(); insert(i); });
        menu.appendChild(li);
      });
      active = 0;
      highlight();
      menu.hidden = false;
    }

    function highlight() {
      Array.prototype.forEach.call(menu.querySelectorAll('li[role=option]'), function (li, i) {
        li.classList.toggle('active', i === active);
        li.setAttribute('aria-selected', i === active ? 'true' : 'false');
      });
    }

    function insert(i) {
      var r = shown[i];
      if (!r) return;
      var before = text.value.slice(0, text.selectionStart);
      var after = text.value.slice(text.selectionStart);
      var m = SLASH.exec(before);
      if (m) before = before.slice(0, before.length - m[0].length + m[1].length);
      text.value = before + r.text + after;
      var caret = before.length + r.text.length;
      text.setSelectionRange(caret, caret);
      if (saveDraft) saveDraft();
      close();
      text.focus();
    }

    text.addEventListener('input', function () {
      var q = query();
      if (q === null) close(); else open(q);
    });
    text.addEventListener('keydown', function (e) {
      if ((e.ctrlKey || e.metaKey) && e.key === '/') { e.preventDefault(); open(''); return; }
      if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') { e.preventDefault(); form.requestSubmit(); return; }
      if (menu.hidden) return;
      if (e.key === 'ArrowDown') { e.preventDefault(); active = Math.min(active + 1, shown.length - 1); highlight(); }
      else if (e.key === 'ArrowUp') { e.preventDefault(); active = Math.max(active - 1, 0); highlight(); }
      else if (e.key === 'Enter' || e.key === 'Tab') { if (shown.length) { e.preventDefault(); insert(active); } }
      else if (e.key === 'Escape') { e.preventDefault(); close(); }
    });
    text.addEventListener('blur', function () { setTimeout(close, 150); });
    if (button) button.addEventListener('click', function () { text.focus(); open(''); });
    var send = document.getElementById('send-reply');
    if (form && send) form.addEventListener('submit', function () { send.disabled = true; });  // one click, one reply
    var file = document.getElementById('image-file');
    if (file) file.addEventListener('change', function () {
      if (file.files.length) document.getElementById('image-form').requestSubmit();
    });
  }

  // ---- the reply being typed outlives a reload, an ended session and a refused send: it is kept
  // in this browser per agent and conversation until the server says it went out (#sent)

  function draftKey() { return 'csbot-draft:' + data.me + ':' + data.app + '/' + data.openid; }

  function store(action, key, value) {
    try {
      if (action === 'get') return localStorage.getItem(key);
      if (action === 'set') localStorage.setItem(key, value);
      else localStorage.removeItem(key);
    } catch (e) { /* storage off (private mode): drafts are not kept */ }
    return null;
  }

  function keepDraft() {
    var text = document.getElementById('reply-text');
    if (!text || !data.app) return null;
    var key = draftKey();
    if (location.hash === '#sent') {
      store('remove', key);
      history.replaceState(null, '', location.pathname + location.search);
    } else if (!text.value) {
      var kept = store('get', key);
      if (kept) text.value = kept;
    }
    function save() { if (text.value) store('set', key, text.value); else store('remove', key); }
    text.addEventListener('input', save);
    return save;
  }

  function forgetDraftsOnSignOut() {
    var form = document.getElementById('logout-form');
    if (!form) return;
    form.addEventListener('submit', function () {
      var prefix = 'csbot-draft:' + data.me + ':';
      try {
        Object.keys(localStorage).forEach(function (k) { if (k.indexOf(prefix) === 0) localStorage.removeItem(k); });
      } catch (e) { /* nothing kept */ }
    });
  }

  // ---- an image that cannot be loaded (deleted, expired, the network) says so instead of a
  // broken icon

  function brokenImage(img) {
    if (img.getAttribute('data-broken')) return;
    img.setAttribute('data-broken', '1');
    var box = document.createElement('div');
    box.className = 'media-missing media-failed';
    box.setAttribute('role', 'img');
    box.textContent = strings.image_failed || '';
    var link = img.parentNode && img.parentNode.tagName === 'A' ? img.parentNode : null;
    (link || img).replaceWith(box);
  }

  document.addEventListener('error', function (e) {
    var t = e.target;
    if (t && t.tagName === 'IMG' && t.classList.contains('photo')) brokenImage(t);
  }, true);

  // ---- the stream

  function start() {
    var params = new URLSearchParams({
      after: String(data.after || 0), after_event: String(data.after_event || 0),
      after_audit: String(data.after_audit || 0), list_qs: data.list_qs || ''
    });
    if (data.app) { params.set('app', data.app); params.set('openid', data.openid); }
    if (data.watch && data.watch.length) params.set('watch', data.watch.join(','));
    if (data.filters.status) params.set('status', data.filters.status);
    if (data.filters.assigned) params.set('assigned', data.filters.assigned);
    if (data.filters.app) params.set('list_app', data.filters.app);
    var source = new EventSource('/admin/events?' + params.toString());
    source.addEventListener('message', function (e) { if (thread) placeMessage(JSON.parse(e.data), false); });
    source.addEventListener('update', function (e) { if (thread) placeMessage(JSON.parse(e.data), true); });
    source.addEventListener('conversation', function (e) {
      var conv = JSON.parse(e.data);
      updateRow(conv);
      if (conv.open) updateOpen(conv);
      notify(conv);
    });
    source.addEventListener('summary', function (e) {
      var s = JSON.parse(e.data);
      setWaiting(s.waiting);
      setMyUnread(s.my_unread);
    });
    source.addEventListener('signed_out', function () {
      source.close();  // sign in again and come back here; the draft is kept
      location.href = '/admin/login?' + new URLSearchParams({ next: location.pathname + location.search, ended: '1' });
    });
  }

  document.addEventListener('DOMContentLoaded', function () {
    var holder = document.getElementById('console-data');
    if (!holder) return;
    data = JSON.parse(holder.textContent);
    strings = data.strings || {};
    localizeAll(document);
    thread = document.getElementById('thread');
    marker = document.getElementById('new-marker');
    if (thread) {
      thread.scrollTop = thread.scrollHeight;
      thread.addEventListener('scroll', function () { if (atBottom()) { if (marker) marker.hidden = true; markRead(); } });
      document.addEventListener('visibilitychange', markRead);
      if (marker) marker.addEventListener('click', toBottom);
      markRead();
    }
    var toggle = document.getElementById('details-toggle');
    if (toggle) toggle.addEventListener('click', function () { document.body.classList.toggle('show-details'); });
    var closeDetails = document.getElementById('details-close');
    if (closeDetails) closeDetails.addEventListener('click', function () { document.body.classList.remove('show-details'); });
    notifyButton = document.getElementById('notify-toggle');
    if (notifyButton) { notifyButton.addEventListener('click', toggleNotifications); showNotifyState(); }
    if (thread) window.addEventListener('load', function () { if (marker && marker.hidden) toBottom(); });
    document.querySelectorAll('img.photo').forEach(function (img) {
      if (img.complete && img.naturalWidth === 0) brokenImage(img);  // failed before this script ran
    });
    var saveDraft = keepDraft();
    forgetDraftsOnSignOut();
    startComposer(saveDraft);
    start();
    setInterval(refreshAgo, 30000);
  });
})();
