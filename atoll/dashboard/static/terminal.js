// A terminal in the page: xterm.js over the dashboard's PTY WebSocket (session cookie, same origin).
"use strict";

function postForm(url, fields) {
  const token = document.querySelector('meta[name="csrf-token"]').content;
  return fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: {"X-CSRF-Token": token, "Content-Type": "application/x-www-form-urlencoded"},
    body: new URLSearchParams(fields).toString(),
  });
}

async function openTerminal(button) {
  const sandboxId = button.dataset.sandbox;
  const base = "/ui/sandboxes/" + encodeURIComponent(sandboxId) + "/pty";
  const container = document.getElementById("terminal");
  const term = new window.Terminal({cursorBlink: true, convertEol: false, fontSize: 14});
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(container);
  fit.fit();
  const response = await postForm(base, {cols: term.cols, rows: term.rows});
  if (!response.ok) {
    term.write("could not open a terminal (" + response.status + ")\r\n");
    return;
  }
  const created = await response.json();
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(scheme + location.host + created.url);
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  socket.addEventListener("message", (event) => {
    term.write(typeof event.data === "string" ? event.data : new Uint8Array(event.data));
  });
  socket.addEventListener("close", () => term.write("\r\n[disconnected]\r\n"));
  term.onData((data) => { if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data)); });
  let timer = null;
  const resize = () => {
    fit.fit();
    clearTimeout(timer);
    timer = setTimeout(() => postForm(base + "/" + encodeURIComponent(created.id) + "/resize",
      {cols: term.cols, rows: term.rows}), 150);
  };
  window.addEventListener("resize", resize);
  container.dataset.session = created.id;
  term.focus();
  button.disabled = true;
}

document.addEventListener("DOMContentLoaded", () => {
  const button = document.getElementById("open-terminal");
  if (button) button.addEventListener("click", () => openTerminal(button));
});
