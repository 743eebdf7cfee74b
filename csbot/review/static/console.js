// csbot console: live updates over server-sent events.
// Everything a customer wrote is put into the page with textContent, never as HTML.
(function () {
  'use strict';

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function pad(n) { return n < 10 ? '0' + n : String(n); }

  // Times come from the server as ISO 8601 with an offset; every one is shown in this
  // browser's zone, with the full time and the zone's offset on hover.
  function toDate(at) {
    if (at === null || at === undefined || at === '') return null;
    var d = typeof at === 'number' ? new Date(at * 1000) : new Date(at);
    return isNaN(d.getTime()) ? null : d;
  }

  function offset(d) {
    var m = -d.getTimezoneOffset();
    var sign = m >= 0 ? '+' : '-';
    m = Math.abs(m);
    return 'UTC' + sign + pad(Math.floor(m / 60)) + ':' + pad(m % 60);
  }

  function when(at) {
    var d = toDate(at);
    if (!d) return '';
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
      pad(d.getHours()) + ':' + pad(d.getMinutes());
  }

  function fullWhen(d) {
    return when(d) + ':' + pad(d.getSeconds()) + ' ' + offset(d);
  }

  function localize(node) {
    var d = toDate(node.getAttribute('datetime'));
    if (!d) return;
    node.textContent = node.getAttribute('data-local') === 'ago' ? ago(d) : when(d);
    node.title = fullWhen(d);
  }

  function timeEl(at, mode, className) {
    var t = el('time', className);
    var d = toDate(at);
    if (!d) return t;
    t.setAttribute('datetime', d.toISOString());
    t.setAttribute('data-local', mode || 'datetime');
    localize(t);
    return t;
  }

  function ago(at) {
    var d = toDate(at);
    if (!d) return '';
    var s = Math.max(0, (Date.now() - d.getTime()) / 1000);
    if (s < 60) return 'just now';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  function card(title, lines, kind) {
    var box = el('div', 'card-msg card-' + kind);
    box.appendChild(el('div', 'card-thumb', kind === 'mp' ? '▣' : '🔗'));
    var body = el('div', 'card-body');
    body.appendChild(el('div', 'card-title', title));
    lines.forEach(function (l) { if (l) body.appendChild(el('div', 'card-line', l)); });
    body.appendChild(el('div', 'card-kind', kind === 'mp' ? 'Mini Program' : 'Link'));
    box.appendChild(body);
    return box;
  }

  function pill(item) {
    var frag = document.createDocumentFragment();
    var label = item.status.replace('_', ' ');
    if ((item.status === 'failed' || item.status === 'dead') && item.errcode) label += ' · errcode ' + item.errcode;
    var p = el('span', 'pill pill-' + item.status, label);
    frag.appendChild(p);
    if (['failed', 'dead', 'quota_exceeded', 'in_doubt'].indexOf(item.status) >= 0 && (item.errmsg || item.error)) {
      frag.appendChild(el('span', 'delivery-error', [item.errmsg, item.error].filter(Boolean).join(' — ')));
    }
    var csrf = document.querySelector('input[name="csrf"]');
    if (item.retryable && csrf) {
      var form = el('form', 'retry-form');
      form.method = 'post';
      form.action = '/admin/messages/' + encodeURIComponent(item.id) + '/retry';
      var hidden = el('input');
      hidden.type = 'hidden';
      hidden.name = 'csrf';
      hidden.value = csrf.value;
      form.appendChild(hidden);
      var button = el('button', 'btn btn-sm retry', 'Retry');
      button.type = 'submit';
      form.appendChild(button);
      frag.appendChild(form);
    }
    return frag;
  }

  function handlerError(item, node) {
    if (item.status === 'failed') {
      node.appendChild(el('div', 'handler-error', 'Handler ' + (item.handler || '?') + ' failed: ' + (item.error || '')));
    }
  }

  function renderMessage(item) {
    var c = item.content || {};
    var node;
    if (item.direction === 'in' && item.type === 'event') {
      node = el('div', 'item sys');
      var ev = (item.event || '').toLowerCase();
      var label = ev === 'user_enter_tempsession'
        ? 'Customer opened the chat' + (c.SessionFrom ? ' from “' + c.SessionFrom + '”' : '')
        : 'Event ' + (item.event || '');
      node.appendChild(el('span', null, label));
      node.appendChild(timeEl(item.at));
      handlerError(item, node);
    } else {
      var inbound = item.direction === 'in';
      var agent = !inbound && (item.author || '').indexOf('agent:') === 0;
      node = el('div', 'item msg ' + (inbound ? 'in' : 'out ' + (agent ? 'agent' : 'bot')));
      var bubble = el('div', 'bubble');
      if (item.type === 'text') {
        bubble.appendChild(el('div', 'text', inbound ? (c.Content !== undefined ? c.Content : item.text)
          : (c.content !== undefined ? c.content : item.text)));
      } else if (item.type === 'image' && inbound && item.media_stored) {
        var img = el('img', 'photo');
        img.src = '/admin/media/' + encodeURIComponent(item.id);
        img.alt = 'Image sent by the customer';
        bubble.appendChild(img);
      } else if (item.type === 'image') {
        var missing = el('div', 'media-missing', inbound ? 'Image not stored' : 'Image');
        missing.appendChild(el('br'));
        missing.appendChild(el('span', 'small', inbound ? 'MediaId ' + (c.MediaId || '?') : (c.media_id || '')));
        bubble.appendChild(missing);
      } else if (item.type === 'miniprogrampage') {
        bubble.appendChild(inbound ? card(c.Title || 'Mini Program card', [c.PagePath, 'AppId ' + (c.AppId || '?')], 'mp')
          : card(c.title, [c.pagepath], 'mp'));
      } else if (item.type === 'link') {
        bubble.appendChild(inbound ? card(c.Title || 'Link', [c.Description, c.Url], 'link')
          : card(c.title, [c.description, c.url], 'link'));
      } else {
        bubble.appendChild(el('div', 'text other', item.text || '[' + item.type + ']'));
      }
      node.appendChild(bubble);
      var meta = el('div', 'meta');
      if (inbound) {
        meta.appendChild(timeEl(item.at));
        if (['pending', 'inline', 'handling'].indexOf(item.status) >= 0) {
          meta.appendChild(document.createTextNode(' · '));
          meta.appendChild(el('span', 'pill pill-queued', item.status));
        } else if (item.handler && item.status === 'done') {
          meta.appendChild(document.createTextNode(' · handled by ' + item.handler));
        }
        node.appendChild(meta);
        if (item.transferred) node.appendChild(el('div', 'sys-inline', "Handed to WeChat's customer-service tool"));
        handlerError(item, node);
      } else {
        meta.appendChild(document.createTextNode((agent ? item.author.slice(6) : 'bot · ' + (item.author || 'handler')) + ' · '));
        meta.appendChild(timeEl(item.at));
        meta.appendChild(document.createTextNode(' · '));
        meta.appendChild(pill(item));
        node.appendChild(meta);
      }
    }
    node.id = 'm' + item.id;
    node.setAttribute('data-kind', 'message');
    node.setAttribute('data-id', String(item.id));
    return node;
  }

  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 120;
  }

  function setStatusBadge(node, status) {
    if (!node) return;
    node.textContent = status;
    node.className = 'badge status-' + status;
  }

  function startThread(thread) {
    var params = new URLSearchParams({
      app: thread.getAttribute('data-app'),
      openid: thread.getAttribute('data-openid'),
      after: thread.getAttribute('data-after') || '0'
    });
    var watch = [];
    thread.querySelectorAll('[data-unsettled]').forEach(function (n) { watch.push(n.getAttribute('data-id')); });
    if (watch.length) params.set('watch', watch.slice(-200).join(','));
    var source = new EventSource('/admin/events?' + params.toString());
    source.addEventListener('message', function (e) {
      var item = JSON.parse(e.data);
      if (document.getElementById('m' + item.id)) return;
      var stick = nearBottom();
      var empty = document.getElementById('empty-thread');
      if (empty) empty.remove();
      thread.appendChild(renderMessage(item));
      thread.setAttribute('data-after', String(item.id));
      if (stick) window.scrollTo(0, document.body.scrollHeight);
    });
    source.addEventListener('update', function (e) {
      var item = JSON.parse(e.data);
      var old = document.getElementById('m' + item.id);
      if (old) old.replaceWith(renderMessage(item));
    });
    source.addEventListener('conversation', function (e) {
      var conv = JSON.parse(e.data);
      setStatusBadge(document.getElementById('conv-status'), conv.status);
      var side = document.getElementById('side-status');
      if (side) side.textContent = conv.status;
      var agent = document.getElementById('conv-agent');
      if (agent) agent.textContent = conv.assigned_agent || '';
    });
  }

  function convRow(conv) {
    var li = el('li', 'conv');
    li.setAttribute('data-key', conv.app + '/' + conv.openid);
    li.setAttribute('data-status', conv.status);
    var a = el('a', 'conv-link');
    a.href = '/admin/c/' + encodeURIComponent(conv.app) + '/' + encodeURIComponent(conv.openid);
    a.appendChild(el('span', 'avatar', conv.openid.slice(-2)));
    var main = el('span', 'conv-main');
    var top = el('span', 'conv-top');
    top.appendChild(el('span', 'openid', conv.openid));
    top.appendChild(el('span', 'badge status-' + conv.status, conv.status));
    if (conv.unanswered) top.appendChild(el('span', 'badge unanswered', 'unanswered'));
    if (conv.undelivered) top.appendChild(el('span', 'badge undelivered', 'undelivered'));
    if (conv.transferred_at) top.appendChild(el('span', 'badge transferred', 'transferred'));
    (conv.tags || []).forEach(function (t) { top.appendChild(el('span', 'tag', t)); });
    main.appendChild(top);
    var last = conv.last_message || {};
    var line = el('span', 'conv-last');
    line.appendChild(el('span', 'dir', last.direction === 'in' ? 'Customer: ' : (last.direction === 'out' ? 'Reply: ' : '')));
    line.appendChild(el('span', 'last-text', last.summary || ''));
    main.appendChild(line);
    a.appendChild(main);
    var side = el('span', 'conv-side');
    side.appendChild(timeEl(conv.last_message_at, 'ago'));
    if (conv.assigned_agent) side.appendChild(el('span', 'agent-name', conv.assigned_agent));
    a.appendChild(side);
    li.appendChild(a);
    li.classList.add('fresh');
    return li;
  }

  function startList(list) {
    var params = new URLSearchParams({ after: list.getAttribute('data-after') || '0' });
    var onlyStatus = list.getAttribute('data-status');
    var filtered = list.getAttribute('data-filtered') === 'yes';
    var source = new EventSource('/admin/events?' + params.toString());
    source.addEventListener('conversation', function (e) {
      var conv = JSON.parse(e.data);
      var key = conv.app + '/' + conv.openid;
      var old = null;
      list.querySelectorAll('li.conv').forEach(function (li) {
        if (li.getAttribute('data-key') === key) old = li;
      });
      if (!old && (filtered || (onlyStatus && conv.status !== onlyStatus))) return;
      var row = convRow(conv);
      if (old) old.remove();
      var empty = list.querySelector('li.empty');
      if (empty) empty.remove();
      list.insertBefore(row, list.firstChild);
    });
    setInterval(function () {
      list.querySelectorAll('time[data-local="ago"]').forEach(localize);
    }, 30000);
  }

  document.addEventListener('DOMContentLoaded', function () {
    document.querySelectorAll('time[datetime]').forEach(localize);
    var thread = document.getElementById('thread');
    if (thread) {
      startThread(thread);
      window.scrollTo(0, document.body.scrollHeight);
    }
    var list = document.getElementById('conv-list');
    if (list) startList(list);
  });
})();
