// vscode-on-demand activity script, added by the proxy to the instance's pages.
//
// Input in this page (keys, pointer, wheel, the window gaining focus, the tab becoming
// visible) is reported to the proxy at a modest rate, so that an instance someone works in is
// not stopped as idle; an open tab that nobody touches reports nothing. The script also asks
// how long the instance has left: shortly before an idle stop it shows a notice, and after a
// stop it says what happened and offers to resume (a reload, which starts the instance).
// It only talks to the instance's own _vod/ endpoints and only uses DOM APIs that a strict
// CSP allows (no inline code, no markup parsed from strings).
(function () {
  'use strict';
  if (window.top !== window || window.__vodActivity) return;
  window.__vodActivity = true;
  var me = document.currentScript;
  if (!me || !window.fetch) return;
  var IDLE_URL = new URL('idle', me.src).href;
  var REPORT_URL = new URL('activity', me.src).href;
  var Z = '2147483647';

  var info = null; // the proxy's last answer
  var infoAt = 0; // when it arrived (performance.now())
  var lastInput = 0;
  var lastReport = -Infinity;
  var reporting = false;
  var pendingInput = false;
  var reportTimer = 0;
  var pollTimer = 0;
  var tickTimer = 0;
  var notice = null;
  var stopped = null;
  var wasStopped = false;

  function now() {
    return performance.now();
  }

  function remainingMs() {
    if (!info || info.remaining_ms == null) return null;
    return Math.max(0, info.remaining_ms - (now() - infoAt));
  }

  function reportEvery() {
    return info ? info.report_ms : 10000;
  }

  function call(method, url) {
    return fetch(url, {
      method: method,
      credentials: 'same-origin',
      cache: 'no-store',
      keepalive: method === 'POST',
      headers: { accept: 'application/json' },
    })
      .then(function (r) {
        if (!r.ok) throw new Error('HTTP ' + r.status);
        return r.json();
      })
      .then(update);
  }

  // ---- reporting input ----

  function report() {
    clearTimeout(reportTimer);
    reportTimer = 0;
    if (reporting) {
      pendingInput = true;
      return;
    }
    pendingInput = false;
    reporting = true;
    lastReport = now();
    // Input batched into this report happened a while ago; the proxy dates it back.
    call('POST', REPORT_URL + '?ago=' + Math.round(Math.max(0, lastReport - lastInput)))
      .catch(function () {})
      .then(function () {
        reporting = false;
        if (pendingInput) later();
      });
  }

  // Input inside the throttle window is reported when the window ends.
  function later() {
    pendingInput = true;
    if (!reportTimer) {
      reportTimer = setTimeout(report, Math.max(0, reportEvery() - (now() - lastReport)));
    }
  }

  function onInput(e) {
    if (!e.isTrusted) return;
    if (e.type === 'visibilitychange' && document.visibilityState !== 'visible') return;
    if (e.type === 'focus' && e.target !== window) return;
    if (stoppedShown()) return; // nothing runs to keep alive; the button resumes
    lastInput = now();
    if (noticeShown()) {
      hideNotice();
      report();
    } else if (now() - lastReport >= reportEvery()) {
      report();
    } else {
      later();
    }
  }

  // ---- asking how long is left ----

  function poll() {
    clearTimeout(pollTimer);
    pollTimer = 0;
    call('GET', IDLE_URL).catch(function () {
      schedulePoll(5000);
    });
  }

  function schedulePoll(ms) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, ms);
  }

  function update(j) {
    info = j;
    infoAt = now();
    render();
    var left = remainingMs();
    var next;
    if (info.needs_resume || left == null) {
      next = 5000;
    } else {
      var untilNotice = left - info.idle_notice * 1000;
      // In the notice window, frequent checks notice activity in other tabs and the stop.
      next = untilNotice <= 0 ? 2000 : Math.min(Math.max(untilNotice, 1000), 15000);
    }
    schedulePoll(next);
  }

  // ---- what the page shows ----

  function render() {
    if (info.needs_resume) {
      wasStopped = true;
      hideNotice();
      showStopped(stoppedText());
      return;
    }
    if (wasStopped) {
      // Started again elsewhere: this page's VS Code lost its session and needs a reload.
      showStopped(['VS Code is running again.', 'Resume to reconnect this page.']);
      return;
    }
    var left = remainingMs();
    var inWindow = info.state === 'Running' && left != null && left <= info.idle_notice * 1000;
    if (inWindow && info.idle_notice > 0) {
      showNotice();
    } else {
      hideNotice();
    }
  }

  function span(ms) {
    var s = Math.max(1, Math.ceil(ms / 1000));
    if (s < 60) return s + (s === 1 ? ' second' : ' seconds');
    var m = Math.ceil(s / 60);
    return m + (m === 1 ? ' minute' : ' minutes');
  }

  function stoppedText() {
    if (info.stop_reason === 'idle') {
      return [
        'VS Code stopped after ' + span(info.idle_timeout * 1000) + ' without activity.',
        'Your files are kept. Resume to start it again.',
      ];
    }
    if (info.stop_reason === 'api') {
      return ['VS Code was stopped by an administrator.', 'Your files are kept. Resume to start it again.'];
    }
    return ['VS Code is stopped.', 'Resume to start it again.'];
  }

  function noticeShown() {
    return !!(notice && notice.isConnected && !notice.hidden);
  }

  function stoppedShown() {
    return !!(stopped && stopped.isConnected && !stopped.hidden);
  }

  function showNotice() {
    if (!notice || !notice.isConnected) {
      notice = document.createElement('div');
      notice.id = 'vod-idle-notice';
      notice.setAttribute('role', 'alert');
      notice.style.cssText =
        'position:fixed;top:12px;left:50%;transform:translateX(-50%);z-index:' + Z + ';' +
        'max-width:90vw;padding:10px 16px;border-radius:6px;background:#b45309;color:#fff;' +
        'font:14px/1.4 system-ui,sans-serif;box-shadow:0 2px 12px rgba(0,0,0,.4)';
      document.body.appendChild(notice);
    }
    notice.hidden = false;
    tick();
  }

  function tick() {
    clearTimeout(tickTimer);
    if (!noticeShown()) return;
    notice.textContent =
      'This VS Code stops in ' + span(remainingMs()) +
      ' \u2014 move the mouse or press a key to keep working.';
    tickTimer = setTimeout(tick, 1000);
  }

  function hideNotice() {
    clearTimeout(tickTimer);
    if (notice) notice.hidden = true;
  }

  function showStopped(lines) {
    if (!stopped || !stopped.isConnected) {
      stopped = document.createElement('div');
      stopped.id = 'vod-idle-stopped';
      stopped.setAttribute('role', 'alertdialog');
      stopped.style.cssText =
        'position:fixed;inset:0;z-index:' + Z + ';display:flex;align-items:center;' +
        'justify-content:center;background:rgba(0,0,0,.6);font:16px/1.5 system-ui,sans-serif';
      var box = document.createElement('div');
      box.style.cssText =
        'max-width:32em;padding:24px 28px;border-radius:8px;background:#fff;color:#222;' +
        'box-shadow:0 4px 24px rgba(0,0,0,.5)';
      var title = document.createElement('p');
      title.id = 'vod-idle-stopped-title';
      title.style.cssText = 'margin:0 0 8px;font-weight:600';
      var detail = document.createElement('p');
      detail.id = 'vod-idle-stopped-detail';
      detail.style.cssText = 'margin:0 0 16px';
      var button = document.createElement('button');
      button.id = 'vod-resume';
      button.type = 'button';
      button.textContent = 'Resume';
      button.style.cssText =
        'font:inherit;padding:6px 18px;border:0;border-radius:4px;background:#0e639c;color:#fff;cursor:pointer';
      // A navigation is what starts a stopped instance; VS Code then connects by itself.
      button.addEventListener('click', function () {
        button.disabled = true;
        location.reload();
      });
      box.appendChild(title);
      box.appendChild(detail);
      box.appendChild(button);
      stopped.appendChild(box);
      document.body.appendChild(stopped);
    }
    stopped.hidden = false;
    document.getElementById('vod-idle-stopped-title').textContent = lines[0];
    document.getElementById('vod-idle-stopped-detail').textContent = lines[1];
  }

  var opts = { capture: true, passive: true };
  ['keydown', 'pointerdown', 'pointermove', 'wheel', 'touchstart'].forEach(function (t) {
    window.addEventListener(t, onInput, opts);
  });
  window.addEventListener('focus', onInput);
  document.addEventListener('visibilitychange', onInput);
  window.addEventListener('pageshow', poll);
  poll();
})();
