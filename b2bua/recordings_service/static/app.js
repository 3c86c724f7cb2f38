// The recordings page: asks for the token, lists and searches through the REST API, plays
// each recording with an <audio> element streaming the WAV (HTTP Range) through the signed
// link the listing returns, draws the call's timeline with its paused spans, downloads.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("b2bua-token") || "";
let next = null;

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function api(path, options) {
  const response = await fetch(path, {
    ...(options || {}),
    headers: { "Authorization": "Bearer " + token },
  });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : response.statusText;
    const err = new Error(message);
    err.status = response.status;
    throw err;
  }
  return body;
}

function seconds(iso) { return iso ? Date.parse(iso) / 1000 : null; }

function length(rec) {
  const start = seconds(rec.started), end = seconds(rec.ended);
  if (start !== null && end !== null) return Math.max(0, end - start);
  const segs = rec.segments || [];
  const last = segs.length ? segs[segs.length - 1][1] : 0;
  return last || 0;
}

function fmtDuration(s) {
  s = Math.round(s);
  const m = Math.floor(s / 60), r = s % 60;
  return m + ":" + String(r).padStart(2, "0");
}

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value === null || value === undefined ? "" : String(value);
  if (cls) el.className = cls;
  return el;
}

// The file's timeline: recorded segments in green over a hatched "paused" background;
// each paused/resumed event a tick with its time and who pressed *1.
function timeline(rec) {
  const bar = document.createElement("div");
  bar.className = "timeline";
  const total = Math.max(length(rec), ...(rec.segments || []).map((s) => s[1] || 0), 0.001);
  const paused = [];
  let at = 0;
  for (const [start, end] of rec.segments || []) {
    const seg = document.createElement("div");
    seg.className = "seg";
    const stop = end === null ? total : end;
    seg.style.left = (100 * start / total) + "%";
    seg.style.width = (100 * (stop - start) / total) + "%";
    seg.title = "recorded " + start.toFixed(1) + "-" + stop.toFixed(1) + " s";
    bar.appendChild(seg);
    if (start > at + 0.05) paused.push([at, start]);
    at = stop;
  }
  if (total > at + 0.05 && rec.pause !== "skip") paused.push([at, total]);
  for (const ev of rec.events || []) {
    const tick = document.createElement("div");
    tick.className = "event";
    tick.style.left = (100 * Math.min(ev.t, total) / total) + "%";
    tick.title = ev.event + " at " + ev.t.toFixed(1) + " s" + (ev.by ? " by " + ev.by : "");
    bar.appendChild(tick);
  }
  bar.dataset.paused = JSON.stringify(paused.map(([a, b]) => [Number(a.toFixed(2)), Number(b.toFixed(2))]));
  bar.title = paused.length ? "paused: " + paused.map(([a, b]) => a.toFixed(1) + "-" + b.toFixed(1) + " s").join(", ")
                            : "recorded throughout";
  return bar;
}

function row(rec, links) {
  const tr = document.createElement("tr");
  tr.className = "recording";
  tr.dataset.callId = rec.call_id;
  tr.appendChild(text("td", (rec.started || "").replace("T", " ").replace("Z", "")));
  tr.appendChild(text("td", rec.direction));
  tr.appendChild(text("td", rec.from, "mono"));
  tr.appendChild(text("td", rec.to, "mono"));
  tr.appendChild(text("td", rec.user));
  tr.appendChild(text("td", fmtDuration(length(rec))));
  const tl = document.createElement("td");
  const bar = timeline(rec);
  tl.appendChild(bar);
  tr.appendChild(tl);
  const actions = document.createElement("td");
  actions.className = "actions";
  const play = text("button", "Play", "play");
  play.type = "button";
  play.addEventListener("click", () => togglePlayer(tr, rec, links, bar));
  actions.appendChild(play);
  const wav = text("a", "WAV", "download-wav");
  wav.href = links.wav;
  wav.download = rec.call_id + ".wav";
  actions.appendChild(wav);
  const json = text("a", "Sidecar", "download-json");
  json.href = links.json;
  json.download = rec.call_id + ".json";
  actions.appendChild(json);
  const del = text("button", "Delete", "delete");
  del.type = "button";
  del.addEventListener("click", () => remove(tr, rec));
  actions.appendChild(del);
  tr.appendChild(actions);
  return tr;
}

function togglePlayer(tr, rec, links, bar) {
  const open = tr.nextElementSibling;
  if (open && open.classList.contains("player")) {
    open.querySelector("audio").pause();
    open.remove();
    return;
  }
  const player = document.createElement("tr");
  player.className = "player";
  const td = document.createElement("td");
  td.colSpan = 8;
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.preload = "metadata";
  audio.src = links.wav;  // streamed with Range requests: seeking does not download the file
  const cursor = document.createElement("div");
  cursor.className = "cursor";
  bar.appendChild(cursor);
  audio.addEventListener("timeupdate", () => {
    const total = audio.duration || length(rec) || 1;
    cursor.style.left = (100 * audio.currentTime / total) + "%";
  });
  audio.addEventListener("error", () => setStatus("cannot play " + rec.call_id + " (link expired? search again)", true));
  td.appendChild(audio);
  player.appendChild(td);
  tr.after(player);
  audio.play().catch(() => {});
}

async function remove(tr, rec) {
  if (!confirm("Delete the recording " + rec.call_id + "? This cannot be undone.")) return;
  try {
    await api("/api/recordings/" + encodeURIComponent(rec.call_id), { method: "DELETE" });
    const player = tr.nextElementSibling;
    if (player && player.classList.contains("player")) player.remove();
    tr.remove();
    setStatus("deleted " + rec.call_id);
  } catch (err) {
    setStatus("delete failed: " + err.message, true);
  }
}

function params(cursor) {
  const p = new URLSearchParams();
  for (const key of ["from", "to", "number", "user", "direction"]) {
    const value = $(key).value.trim();
    if (value) p.set(key, value);
  }
  p.set("limit", "50");
  if (cursor) p.set("cursor", cursor);
  return p.toString();
}

async function search(cursor) {
  setStatus("searching…");
  try {
    const body = await api("/api/recordings?" + params(cursor));
    const tbody = $("recordings").querySelector("tbody");
    if (!cursor) tbody.replaceChildren();
    for (const rec of body.recordings) tbody.appendChild(row(rec, body.links[rec.call_id]));
    next = body.next;
    $("more").hidden = !next;
    $("recordings").hidden = false;
    const shown = tbody.querySelectorAll("tr.recording").length;
    setStatus(shown ? shown + " recording" + (shown === 1 ? "" : "s") + (next ? " (more below)" : "") : "no recordings found");
  } catch (err) {
    if (err.status === 401) {
      signOut();
      setStatus("the token was not accepted", true);
    } else {
      setStatus("search failed: " + err.message, true);
    }
  }
}

function signedIn() {
  $("search-form").hidden = false;
  $("signout").hidden = false;
  $("token").value = "";
  $("token").required = false;
  $("token").placeholder = "signed in";
  search(null);
}

function signOut() {
  token = "";
  sessionStorage.removeItem("b2bua-token");
  $("search-form").hidden = true;
  $("recordings").hidden = true;
  $("more").hidden = true;
  $("signout").hidden = true;
  $("token").required = true;
  $("token").placeholder = "bearer token";
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    token = value;
    sessionStorage.setItem("b2bua-token", token);
    signedIn();
  });
  $("signout").addEventListener("click", () => { signOut(); setStatus("signed out"); });
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search(null); });
  $("more").addEventListener("click", () => search(next));
  if (token) signedIn(); else setStatus("enter an API token to see the recordings");
});
