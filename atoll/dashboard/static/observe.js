// One sandbox, observed: CPU and memory graphs (uPlot) fed by polling the metrics route, and the
// output of a process from its SSE stream (the API's frames: {"type","seq","data"|"exit_code"}).
"use strict";

const MAX_POINTS = 720;  // an hour at the default 5 s

function chartSize(el) {
  return {width: Math.max(el.clientWidth, 240), height: 180};
}

function makeChart(el, label, unit, max) {
  const opts = {
    ...chartSize(el),
    title: label,
    // one sample has no span of time: show the minute before it
    scales: {x: {time: true, range: (u, lo, hi) => lo === hi ? [lo - 60, hi + 5] : [lo, hi]}, y: max ? {range: [0, max]} : {auto: true, range: (u, lo, hi) => [0, Math.max(hi * 1.1, 1)]}},
    series: [{}, {label: label, stroke: "#0b63ce", fill: "rgba(11,99,206,0.12)", width: 2,
      value: (u, v) => v == null ? "–" : v.toFixed(1) + " " + unit}],
    axes: [{}, {values: (u, ticks) => ticks.map((t) => t + " " + unit), size: 70}],
  };
  return new window.uPlot(opts, [[], []], el);
}

function startMetrics(section) {
  if (!window.uPlot) return;
  const cpuEl = document.getElementById("chart-cpu");
  const memEl = document.getElementById("chart-mem");
  const latest = document.getElementById("metrics-latest");
  const cpu = makeChart(cpuEl, "CPU", "%", 100);
  const mem = makeChart(memEl, "Memory", "MiB", 0);
  const xs = [], cpuYs = [], memYs = [];
  let since = null, intervalMs = 5000, timer = null;

  async function poll() {
    const url = section.dataset.url + (since ? "?since=" + encodeURIComponent(since) : "");
    try {
      const response = await fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}});
      if (response.ok) {
        const body = await response.json();
        intervalMs = Math.max(1000, Math.round((body.interval_s || 5) * 1000));
        for (const s of body.items) {
          if (since && s.timestamp <= since) continue;
          xs.push(Date.parse(s.timestamp) / 1000);
          cpuYs.push(s.cpu_used_pct);
          memYs.push(s.mem_used_mib);
          since = s.timestamp;
        }
        if (xs.length > MAX_POINTS) {
          const drop = xs.length - MAX_POINTS;
          xs.splice(0, drop); cpuYs.splice(0, drop); memYs.splice(0, drop);
        }
        if (body.items.length) {
          const last = body.items[body.items.length - 1];
          cpu.setData([xs, cpuYs]);
          mem.setData([xs, memYs]);
          latest.textContent = "CPU " + last.cpu_used_pct.toFixed(1) + " % · memory " +
            last.mem_used_mib.toFixed(1) + " / " + last.mem_total_mib.toFixed(0) + " MiB · " + xs.length + " samples";
          section.dataset.samples = String(xs.length);
        }
      } else if (response.status === 404 || response.status === 401) {
        return;  // the sandbox is gone, or the session: stop polling
      }
    } catch (err) {
      // a network blip: try again at the next interval
    }
    timer = setTimeout(poll, intervalMs);
  }
  window.addEventListener("resize", () => {
    cpu.setSize(chartSize(cpuEl));
    mem.setSize(chartSize(memEl));
  });
  poll();
  return () => clearTimeout(timer);
}

let outputSource = null;

function showOutput(button) {
  const box = document.getElementById("process-output");
  const text = document.getElementById("process-output-text");
  if (outputSource) outputSource.close();
  text.textContent = "";
  box.hidden = false;
  box.dataset.pid = button.dataset.pid;
  box.dataset.ended = "";
  document.getElementById("process-output-title").textContent = "Output of " + button.dataset.pid;
  const MAX_CHARS = 1 << 20;  // keep the page light: the newest megabyte of text
  let lastSeq = 0, retries = 0;

  function open() {
    // reconnecting asks for what came after the last event seen: nothing repeats
    const source = new EventSource(button.dataset.url + "?since=" + lastSeq);
    outputSource = source;
    source.addEventListener("message", (event) => {
      const frame = JSON.parse(event.data);
      retries = 0;
      if (typeof frame.seq === "number") lastSeq = Math.max(lastSeq, frame.seq);
      if (frame.type === "stdout" || frame.type === "stderr") {
        const span = document.createElement("span");
        if (frame.type === "stderr") span.className = "stderr";
        span.textContent = frame.data;
        text.appendChild(span);
        while (text.textContent.length > MAX_CHARS && text.firstChild) text.removeChild(text.firstChild);
      } else if (frame.type === "truncated") {
        text.appendChild(document.createTextNode("[older output dropped]\n"));
      } else if (frame.type === "exit") {
        text.appendChild(document.createTextNode("\n[exit " + frame.exit_code + "]\n"));
        box.dataset.ended = String(frame.exit_code);
        source.close();
      }
    });
    source.addEventListener("error", () => {
      source.close();  // no blind reconnect from the start: from lastSeq, a few times
      if (box.dataset.ended || outputSource !== source) return;
      if (++retries > 5) { box.dataset.ended = "closed"; return; }
      setTimeout(() => { if (outputSource === source) open(); }, 1000 * retries);
    });
  }
  open();
}

document.addEventListener("DOMContentLoaded", () => {
  const section = document.getElementById("metrics");
  if (section) startMetrics(section);
  const processes = document.getElementById("processes");
  if (processes) {
    processes.addEventListener("click", (event) => {
      const button = event.target.closest("button.show-output");
      if (button) showOutput(button);
    });
  }
  const close = document.getElementById("close-output");
  if (close) close.addEventListener("click", () => {
    if (outputSource) outputSource.close();
    document.getElementById("process-output").hidden = true;
  });
});
