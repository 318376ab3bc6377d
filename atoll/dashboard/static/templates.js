// Importing a template with progress: the import route streams the API's NDJSON lines
// ({"phase","message"}, then {"template"} or {"error"}), shown as they arrive.
"use strict";

function addLine(list, text, kind) {
  const item = document.createElement("li");
  item.textContent = text;
  if (kind) item.className = kind;
  list.appendChild(item);
  return item;
}

async function importTemplate(form) {
  const list = document.getElementById("import-progress");
  const button = form.querySelector("button[type=submit]");
  const token = document.querySelector('meta[name="csrf-token"]').content;
  list.textContent = "";
  list.hidden = false;
  list.dataset.done = "";
  button.disabled = true;
  let outcome = "error";
  try {
    const response = await fetch(form.action, {
      method: "POST", credentials: "same-origin",
      headers: {"X-CSRF-Token": token, "Accept": "application/x-ndjson",
        "Content-Type": "application/x-www-form-urlencoded"},
      body: new URLSearchParams(new FormData(form)).toString(),
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (value) pending += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, cut).trim();
        pending = pending.slice(cut + 1);
        if (!line) continue;
        const event = JSON.parse(line);
        if (event.template) {
          addLine(list, "imported " + event.template.name + " (" + event.template.state + ")", "ok");
          outcome = "ok";
        } else if (event.error) {
          addLine(list, "failed: " + event.error.message, "error");
        } else {
          addLine(list, event.phase + ": " + event.message);
        }
      }
      if (done) break;
    }
  } catch (err) {
    addLine(list, "failed: " + err, "error");
  }
  button.disabled = false;
  list.dataset.done = outcome;
  if (outcome === "ok" && window.htmx) {
    window.htmx.ajax("GET", "/ui/templates", {target: "#template-list", select: "#template-list", swap: "outerHTML"});
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("import-form");
  if (form) form.addEventListener("submit", (event) => { event.preventDefault(); importTemplate(form); });
});
