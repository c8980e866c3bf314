// tether labeling: keyboard shortcuts, drag-to-rank, time per item. Plain JavaScript, no build step.
// Model outputs are only ever read and written as text (textContent / value), never as HTML.
(function () {
  "use strict";
  var start = performance.now();
  var form = document.getElementById("task-form");
  var list = document.getElementById("rank-list");
  var order = document.getElementById("rank-order");
  var selected = null;
  var dragged = null;
  var submitted = false;

  function typing(el) {
    if (!el) return false;
    if (el.tagName === "TEXTAREA" || el.isContentEditable) return true;
    return el.tagName === "INPUT" && ["checkbox", "radio", "button", "submit", "hidden"].indexOf(el.type) < 0;
  }

  // --- ranking: drag and drop, arrow buttons, keys ---------------------------------------------
  function items() { return list ? Array.prototype.slice.call(list.querySelectorAll(".rank-item")) : []; }
  function sync() { if (order) order.value = items().map(function (li) { return li.dataset.id; }).join(","); }
  function pick(li) {
    selected = li;
    items().forEach(function (x) { x.classList.toggle("selected", x === li); });
    if (li) li.focus();
  }
  function move(li, delta) {
    if (!li) return;
    if (delta < 0 && li.previousElementSibling) list.insertBefore(li, li.previousElementSibling);
    if (delta > 0 && li.nextElementSibling) list.insertBefore(li.nextElementSibling, li);
    sync();
    pick(li);
  }
  if (list) {
    items().forEach(function (li) {
      li.querySelector(".up").addEventListener("click", function () { move(li, -1); });
      li.querySelector(".down").addEventListener("click", function () { move(li, 1); });
      li.addEventListener("click", function (ev) { if (!ev.target.closest("button")) pick(li); });
      li.addEventListener("dragstart", function (ev) {
        dragged = li;
        li.classList.add("dragging");
        ev.dataTransfer.effectAllowed = "move";
        ev.dataTransfer.setData("text/plain", li.dataset.id);
      });
      li.addEventListener("dragend", function () { li.classList.remove("dragging"); dragged = null; sync(); });
    });
    list.addEventListener("dragover", function (ev) {
      if (!dragged) return;
      ev.preventDefault();
      var target = ev.target.closest(".rank-item");
      if (!target || target === dragged) return;
      var all = items();
      // moving up: go before the target; moving down: go after it
      if (all.indexOf(dragged) > all.indexOf(target)) list.insertBefore(dragged, target);
      else list.insertBefore(dragged, target.nextElementSibling);
    });
    list.addEventListener("drop", function (ev) { ev.preventDefault(); sync(); });
  }
  function rankKey(ev) {
    if (!list) return false;
    if (/^[1-9]$/.test(ev.key)) {
      var li = list.querySelector('.rank-item[data-label="' + ev.key + '"]');
      if (li) { pick(li); return true; }
    }
    if (ev.key === "ArrowUp" || ev.key === "k") { move(selected, -1); return !!selected; }
    if (ev.key === "ArrowDown" || ev.key === "j") { move(selected, 1); return !!selected; }
    return false;
  }

  // --- critique: start the rewrite from the response's text ----------------------------------
  var copy = document.getElementById("copy-response");
  if (copy) {
    copy.addEventListener("click", function () {
      var rw = document.getElementById("rewrite");
      var text = document.querySelector('[data-testid="response-text"]');
      if (rw && text && !rw.value) rw.value = text.textContent;
      if (rw) rw.focus();
    });
  }

  // --- the flaws form: "No flaws" clears the boxes ---------------------------------------------
  var none = document.getElementById("no-flaws");
  if (none) {
    none.addEventListener("click", function () {
      document.querySelectorAll('input[name="categories"]').forEach(function (c) { c.checked = false; });
    });
  }

  // --- submit once, with the time spent and the ranking order --------------------------------
  if (form) {
    form.addEventListener("submit", function (ev) {
      if (submitted) { ev.preventDefault(); return; }
      submitted = true;
      var d = document.getElementById("duration");
      if (d) d.value = String(Math.round(performance.now() - start));
      sync();
    });
  }

  // --- keyboard shortcuts: [data-key] clicks, [data-focus-key] focuses -------------------------
  document.addEventListener("keydown", function (ev) {
    if (ev.altKey || ev.isComposing) return;
    var ctrl = ev.ctrlKey || ev.metaKey;
    if (ctrl && ev.key !== "Enter") return;  // leave the browser's own shortcuts alone
    var key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    var combo = (ctrl ? "ctrl+" : "") + key;
    var active = document.activeElement;
    if (key === "Escape" && typing(active)) { active.blur(); ev.preventDefault(); return; }
    if (typing(active) && combo !== "ctrl+Enter") return;
    if (!ctrl && rankKey(ev)) { ev.preventDefault(); return; }
    var el = document.querySelector('[data-key="' + CSS.escape(combo) + '"]');
    if (el) { ev.preventDefault(); el.click(); return; }
    el = document.querySelector('[data-focus-key="' + CSS.escape(key) + '"]');
    if (el) { ev.preventDefault(); el.focus(); }
  });
})();
