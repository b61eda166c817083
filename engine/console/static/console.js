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
