// The dashboard's own script (no inline scripts: the pages' CSP allows only 'self').
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

// the sandboxes list: rows pushed by the server whenever a sandbox of this org changes
function watchRows() {
  const rows = document.getElementById("rows");
  if (!rows || !rows.dataset.events || !window.EventSource) return;
  const source = new EventSource(rows.dataset.events);
  source.addEventListener("rows", (event) => {
    rows.innerHTML = event.data;
    if (window.htmx) window.htmx.process(rows);
    const total = document.getElementById("total");
    if (total) total.textContent = String(rows.querySelectorAll("tr[data-state]").length);
  });
  window.addEventListener("pagehide", () => source.close());
}

function filesUrl(sandboxId, path) {
  return "/ui/sandboxes/" + encodeURIComponent(sandboxId) + "/files?path=" + encodeURIComponent(path);
}

// uploads: the file's bytes as the request body, into the directory the browser shows
function watchUploads() {
  const input = document.getElementById("upload-input");
  if (!input) return;
  input.addEventListener("change", async () => {
    const sandboxId = input.dataset.sandbox;
    const listing = document.querySelector("#files .files");
    const dir = listing ? listing.dataset.path : "/";
    for (const file of Array.from(input.files || [])) {
      const target = (dir.endsWith("/") ? dir : dir + "/") + file.name;
      const url = "/ui/sandboxes/" + encodeURIComponent(sandboxId) + "/files/upload?path=" + encodeURIComponent(target);
      const response = await fetch(url, {
        method: "POST", body: file, credentials: "same-origin",
        headers: {"X-CSRF-Token": csrfToken(), "Content-Type": "application/octet-stream"},
      });
      const flash = document.getElementById("flash");
      if (flash) flash.textContent = response.ok ? "uploaded " + target : "upload of " + target + " failed (" + response.status + ")";
    }
    input.value = "";
    if (window.htmx) window.htmx.ajax("GET", filesUrl(sandboxId, dir), "#files");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  watchRows();
  watchUploads();
});
