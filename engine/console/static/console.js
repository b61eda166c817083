// the console's one script (the CSP allows no inline script): behaviour by data- attributes
"use strict";

// --- front desk (owner: frontdesk-pages): the Documents page's drop zone -----------------------
// A form marked data-dropzone takes a file dropped on its [data-dropzone-area] into its file
// field and names it in [data-dropzone-label]; the form is posted as it is without script.
(function () {
  function sizeOf(n) {
    if (n < 1024) { return n + " B"; }
    if (n < 1024 * 1024) { return (n / 1024).toFixed(1) + " KiB"; }
    return (n / (1024 * 1024)).toFixed(1) + " MiB";
  }
  function setUp(form) {
    var area = form.querySelector("[data-dropzone-area]");
    var input = form.querySelector('input[type="file"]');
    var label = form.querySelector("[data-dropzone-label]");
    if (!area || !input || !label) { return; }
    area.classList.add("dropzone-on");
    function show() {
      var file = input.files && input.files[0];
      label.textContent = file ? file.name + " (" + sizeOf(file.size) + ")" : label.dataset.empty;
      area.classList.toggle("dropzone-chosen", !!file);
    }
    show();
    ["dragenter", "dragover"].forEach(function (name) {
      area.addEventListener(name, function (event) {
        event.preventDefault();
        area.classList.add("dropzone-over");
      });
    });
    ["dragleave", "drop"].forEach(function (name) {
      area.addEventListener(name, function () { area.classList.remove("dropzone-over"); });
    });
    area.addEventListener("drop", function (event) {
      event.preventDefault();
      if (event.dataTransfer && event.dataTransfer.files.length) {
        input.files = event.dataTransfer.files;
        show();
      }
    });
    input.addEventListener("change", show);
  }
  function start() { document.querySelectorAll("form[data-dropzone]").forEach(setUp); }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
// --- end front desk ---------------------------------------------------------------------------

// --- ops pages (owner: ops-pages): the dashboard refreshes its figures ----------------------
// An element with data-refresh="URL" is replaced every data-refresh-seconds (default 15) by the
// HTML the URL answers (the same figures, without the page around them). A failed fetch keeps
// what is shown and marks it stale; a logged-out session (redirect to the login page) reloads
// the page so the browser lands on the login form.
(function () {
  function setUp(box) {
    var url = box.dataset.refresh;
    var every = Math.max(5, parseInt(box.dataset.refreshSeconds || "15", 10)) * 1000;
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (answer) {
          if (answer.redirected || answer.status === 401) { window.location.reload(); return null; }
          if (!answer.ok) { throw new Error("HTTP " + answer.status); }
          return answer.text();
        })
        .then(function (html) {
          if (html !== null) {
            box.innerHTML = html;
            box.classList.remove("stale");
          }
        })
        .catch(function () { box.classList.add("stale"); })
        .then(function () { window.setTimeout(tick, every); });
    }
    window.setTimeout(tick, every);
  }
  function start() { document.querySelectorAll("[data-refresh]").forEach(setUp); }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
// --- end ops pages ---------------------------------------------------------------------------
