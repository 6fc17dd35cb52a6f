// The inbox page's live behaviour, plain JavaScript: new items from the
// stream (GET /v1/inbox/stream, authenticated by the session cookie),
// mark-as-read, archive and snooze without a reload (an archived or snoozed
// item leaves the list; a snoozed one comes back on the stream), relative
// times. Everything from the server
// is placed with textContent, never as HTML.
(function () {
  'use strict';
  var list = document.getElementById('items');
  var badge = document.getElementById('unseen');
  var empty = document.getElementById('empty');
  var live = document.getElementById('live');
  var markAll = document.getElementById('mark-all');
  if (!list || !badge) return;

  function setUnseen(n) {
    n = Math.max(0, n);
    badge.dataset.count = String(n);
    badge.textContent = n + ' new';
    badge.setAttribute('aria-label', n + ' new');
    badge.hidden = n === 0;
    document.title = (n ? '(' + n + ') ' : '') + 'Inbox · herald';
  }

  function refreshMarkAll() {
    if (markAll) markAll.disabled = !list.querySelector('.item.unread');
  }

  // The server passes on only the action urls its one rule allows
  // (src/notify/links.rs: http(s) urls and paths on this site, nothing a
  // browser would read differently). This last check asks the browser's
  // own parser where a link would lead: to http(s), and, unless it is
  // spelled as an absolute http(s) url, to this very origin.
  function safeUrl(url) {
    if (typeof url !== 'string' || !url) return null;
    var target;
    try { target = new URL(url, window.location.href); } catch (e) { return null; }
    if (target.protocol !== 'https:' && target.protocol !== 'http:') return null;
    if (!/^https?:\/\//i.test(url) && target.origin !== window.location.origin) return null;
    return url;
  }

  function relative(iso) {
    var then = new Date(iso);
    var secs = Math.round((Date.now() - then.getTime()) / 1000);
    if (isNaN(secs)) return '';
    if (secs < 45) return 'just now';
    var mins = Math.round(secs / 60);
    if (mins < 60) return mins + ' min ago';
    var hours = Math.round(mins / 60);
    if (hours < 24) return hours + ' h ago';
    var days = Math.round(hours / 24);
    if (days < 7) return days + ' d ago';
    return then.toLocaleDateString(undefined, { month: 'short', day: 'numeric', year: 'numeric' });
  }

  function updateTimes() {
    var times = document.querySelectorAll('time[datetime]');
    for (var i = 0; i < times.length; i++) {
      var t = times[i];
      var text = relative(t.getAttribute('datetime'));
      if (text) t.textContent = text;
      t.title = new Date(t.getAttribute('datetime')).toLocaleString();
    }
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function render(item) {
    var li = el('li', 'item fresh' + (item.readAt ? '' : ' unread'));
    li.id = item.id;
    li.dataset.id = String(item.id).replace(/^ntf_/, '');
    li.appendChild(el('span', 'dot')).setAttribute('aria-hidden', 'true');
    var main = li.appendChild(el('div', 'item-main'));
    var top = main.appendChild(el('div', 'item-top'));
    top.appendChild(el('h2', 'item-title', item.title));
    var time = top.appendChild(el('time', '', ''));
    time.setAttribute('datetime', item.createdAt);
    if (item.body) main.appendChild(el('p', 'item-body', item.body));
    var actions = main.appendChild(el('div', 'item-actions'));
    (Array.isArray(item.actions) ? item.actions : []).forEach(function (action) {
      var href = action && safeUrl(action.url);
      if (!href) return;
      var a = actions.appendChild(el('a', 'btn btn-sm btn-primary', String(action.label || 'Open')));
      a.href = href;
      a.rel = 'noopener noreferrer';
    });
    if (!item.readAt) {
      var form = actions.appendChild(el('form', 'js-post mark-read'));
      form.method = 'post';
      form.action = '/inbox/' + encodeURIComponent(item.id) + '/read';
      form.appendChild(el('button', 'btn btn-sm btn-ghost', 'Mark as read')).type = 'submit';
    }
    leaveButton(actions, item.id, 'archive', 'archive', 'Archive');
    leaveButton(actions, item.id, 'snooze/hour', 'snooze-hour', 'Snooze 1 hour');
    leaveButton(actions, item.id, 'snooze/tomorrow', 'snooze-tomorrow', 'Until tomorrow');
    return li;
  }

  // A form whose success takes the item off the list (archive, snooze).
  function leaveButton(actions, id, path, className, label) {
    var form = actions.appendChild(el('form', 'js-post leaves'));
    form.method = 'post';
    form.action = '/inbox/' + encodeURIComponent(id) + '/' + path;
    form.appendChild(el('button', 'btn btn-sm btn-ghost ' + className, label)).type = 'submit';
  }

  function markRead(li) {
    li.classList.remove('unread');
    var form = li.querySelector('form.mark-read');
    if (form) form.remove();
  }

  document.addEventListener('submit', function (event) {
    var form = event.target;
    if (!form.classList || !form.classList.contains('js-post')) return;
    event.preventDefault();
    var button = form.querySelector('button');
    if (button) button.disabled = true;
    fetch(form.action, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { Accept: 'application/json' }
    }).then(function (response) {
      if (response.status === 401) { window.location.assign('/login'); return null; }
      if (!response.ok) throw new Error('HTTP ' + response.status);
      return response.json();
    }).then(function (result) {
      if (!result) return;
      if (form.dataset.all) {
        var unread = list.querySelectorAll('.item.unread');
        for (var i = 0; i < unread.length; i++) markRead(unread[i]);
      } else if (form.classList.contains('leaves')) {
        var gone = form.closest('.item');
        if (gone) gone.remove();
        if (empty && !list.querySelector('.item')) empty.hidden = false;
      } else {
        var li = form.closest('.item');
        if (li) markRead(li);
      }
      setUnseen(result.unseenCount);
      refreshMarkAll();
    }).catch(function () {
      if (button) button.disabled = false;
    });
  });

  function connect() {
    if (list.dataset.live !== '1' || !window.EventSource) return;
    var source = new EventSource('/v1/inbox/stream?lastEventId=' + encodeURIComponent(list.dataset.newest || '0'));
    source.onopen = function () { live.dataset.state = 'on'; live.textContent = 'Live'; };
    source.onerror = function () { live.dataset.state = 'off'; live.textContent = 'Reconnecting…'; };
    source.onmessage = function (event) {
      var item;
      try { item = JSON.parse(event.data); } catch (e) { return; }
      if (!item || !item.id || document.getElementById(item.id)) return;
      list.insertBefore(render(item), list.firstChild);
      list.dataset.newest = event.lastEventId || list.dataset.newest;
      if (empty) empty.hidden = true;
      if (!item.seenAt) setUnseen(Number(badge.dataset.count || 0) + 1);
      refreshMarkAll();
      updateTimes();
    };
  }

  updateTimes();
  setInterval(updateTimes, 30000);
  connect();
})();
