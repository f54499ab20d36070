// neuralworld web player: draws the world's frames, sends the player's controls.
// Two transports speak one protocol (see neuralworld/play/server.py): world.json beside the
// page says which. "neuralworld-play" (served by `neuralworld play`): a WebSocket to the server;
// "neuralworld-web" (a folder from `neuralworld export --web`): local.js, which runs the world in
// this browser. No build step, nothing from the network.
"use strict";

const KEY_AXIS_FRACTION = 0.5;   // a held key drives an axis to half its range end
const MOUSE_FULL_PX = 60;        // mouse pixels per tick that reach an axis's range end
const STICK_DEADZONE = 0.2;

// default keys by control name, used where the ActionSpec's hints name none
const BUTTON_KEYS = {
  forward: ["KeyW", "ArrowUp"], back: ["KeyS", "ArrowDown"], backward: ["KeyS", "ArrowDown"],
  left: ["KeyA"], right: ["KeyD"], strafe_left: ["KeyA"], strafe_right: ["KeyD"],
  attack: ["mouse0", "ControlLeft", "ControlRight"], fire: ["mouse0", "ControlLeft"], shoot: ["mouse0", "ControlLeft"],
  use: ["KeyE", "Space"], interact: ["KeyE"], jump: ["Space"], crouch: ["KeyC"], run: ["ShiftLeft"], sprint: ["ShiftLeft"],
};
// axes: [negative key, positive key] and the mouse direction that drives them (sign: +1 or -1)
const AXIS_DEFAULTS = {
  turn: { keys: ["ArrowLeft", "ArrowRight"], mouse: "x", sign: 1, stick: "rx" },
  yaw: { keys: ["ArrowLeft", "ArrowRight"], mouse: "x", sign: 1, stick: "rx" },
  pitch: { keys: ["PageDown", "PageUp"], mouse: "y", sign: -1, stick: "ry" },  // mouse up looks up
  move_x: { keys: ["KeyA", "KeyD"], stick: "lx" },
  move_y: { keys: ["KeyC", "Space"] },
  move_z: { keys: ["KeyS", "KeyW"], stick: "-ly" },
  roll: { keys: ["KeyQ", "KeyE"] },
};
// gamepad (standard mapping) by button name
const PAD_BUTTONS = {
  forward: p => p.ly < -0.5, back: p => p.ly > 0.5, backward: p => p.ly > 0.5,
  strafe_left: p => p.lx < -0.5, strafe_right: p => p.lx > 0.5, left: p => p.lx < -0.5, right: p => p.lx > 0.5,
  attack: p => p.b[7] || p.b[5], fire: p => p.b[7], shoot: p => p.b[7],
  use: p => p.b[0], interact: p => p.b[0], jump: p => p.b[0], crouch: p => p.b[1], run: p => p.b[10],
};

const $ = id => document.getElementById(id);
const stage = $("stage"), canvas = $("screen"), ctx = canvas.getContext("2d");

const nw = window.nw = {
  world: null, ws: null, seq: 0, held: new Set(), mouseDx: 0, mouseDy: 0,
  stats: { framesShown: 0, fps: 0, latencyMs: null, step: 0, serverFps: null, dropped: 0 },
  lastHeader: null, lastAction: null, errors: [], messages: [], recordingUrl: null,
  bindings: null, transport: null, send: msg => { if (nw.transport) nw.transport.send(msg); },
};
const shownAt = [];

// ---- controls from the ActionSpec -------------------------------------------
function keyCodes(token) {
  const t = token.trim().toLowerCase();
  if (!t) return [];
  if (t === "mouse button" || t === "mouse left" || t === "left mouse") return ["mouse0"];
  if (t === "mouse right" || t === "right mouse") return ["mouse2"];
  if (/^[a-z]$/.test(t)) return ["Key" + t.toUpperCase()];
  if (/^[0-9]$/.test(t)) return ["Digit" + t];
  const named = { up: ["ArrowUp"], down: ["ArrowDown"], left: ["ArrowLeft"], right: ["ArrowRight"], space: ["Space"],
    ctrl: ["ControlLeft", "ControlRight"], control: ["ControlLeft", "ControlRight"], shift: ["ShiftLeft", "ShiftRight"],
    alt: ["AltLeft", "AltRight"], enter: ["Enter"], tab: ["Tab"], pageup: ["PageUp"], pagedown: ["PageDown"] };
  return named[t] || [];
}

function buildBindings(spec, hints) {
  const buttons = {}, axes = {};
  for (const name of spec.buttons) {
    const hint = hints[name] || "";
    let codes = hint.split(/[\/,]/).flatMap(keyCodes);
    if (!codes.length) codes = BUTTON_KEYS[name] || [];
    buttons[name] = codes;
  }
  for (const ax of spec.axes) {
    const d = AXIS_DEFAULTS[ax.name] || {};
    const b = { low: ax.low, high: ax.high, neg: [], pos: [], mouse: d.mouse || null, sign: d.sign || 1, stick: d.stick || null };
    for (const part of (hints[ax.name] || "").split("/")) {
      const p = part.trim().toLowerCase();
      if (p === "mouse x" || p === "mouse y") { b.mouse = p.slice(-1); continue; }
      const pair = part.split(",").map(keyCodes);
      if (pair.length === 2 && pair[0].length && pair[1].length) { b.neg.push(...pair[0]); b.pos.push(...pair[1]); }
    }
    if (!b.neg.length && d.keys) { b.neg = [d.keys[0]]; b.pos = [d.keys[1]]; }
    axes[ax.name] = b;
  }
  return { buttons, axes };
}

function readPad() {
  const pads = navigator.getGamepads ? navigator.getGamepads() : [];
  const g = Array.from(pads || []).find(p => p && p.connected);
  if (!g) return null;
  const dz = v => (Math.abs(v) < STICK_DEADZONE ? 0 : v);
  return { lx: dz(g.axes[0] || 0), ly: dz(g.axes[1] || 0), rx: dz(g.axes[2] || 0), ry: dz(g.axes[3] || 0),
           b: g.buttons.map(x => x.pressed) };
}

function currentAction() {
  const { buttons: bb, axes: ab } = nw.bindings;
  const pad = readPad();
  const buttons = {}, axes = {};
  for (const [name, codes] of Object.entries(bb)) {
    const held = codes.some(c => nw.held.has(c)) || (pad && PAD_BUTTONS[name] ? !!PAD_BUTTONS[name](pad) : false);
    buttons[name] = held ? 1 : 0;
  }
  for (const [name, b] of Object.entries(ab)) {
    const end = v => (v >= 0 ? v * b.high : -v * b.low);  // -1..1 -> low..high (0 stays 0)
    let v = 0;
    if (b.neg.some(c => nw.held.has(c))) v += end(-KEY_AXIS_FRACTION);
    if (b.pos.some(c => nw.held.has(c))) v += end(KEY_AXIS_FRACTION);
    if (b.mouse) {
      const px = (b.mouse === "x" ? nw.mouseDx : nw.mouseDy) * b.sign;
      v += end(Math.max(-1, Math.min(1, px / MOUSE_FULL_PX)));
    }
    if (pad && b.stick) {
      const s = b.stick.startsWith("-") ? -pad[b.stick.slice(1)] : pad[b.stick];
      v += end(s);
    }
    axes[name] = Math.max(b.low, Math.min(b.high, v));
  }
  nw.mouseDx = nw.mouseDy = 0;
  return { buttons, axes };
}
nw.currentAction = currentAction;

function tick() {
  if (!nw.bindings) return;
  const a = currentAction();
  nw.lastAction = a;
  nw.send({ type: "action", buttons: a.buttons, axes: a.axes, seq: ++nw.seq, t: performance.now() });
}

// ---- input events --------------------------------------------------------------
function usesCode(code) {
  if (!nw.bindings) return false;
  return Object.values(nw.bindings.buttons).some(c => c.includes(code)) ||
         Object.values(nw.bindings.axes).some(b => b.neg.includes(code) || b.pos.includes(code));
}
document.addEventListener("keydown", e => {
  if (e.target instanceof HTMLInputElement) return;
  if (!usesCode(e.code)) return;
  e.preventDefault();
  if (!nw.held.has(e.code)) { nw.held.add(e.code); tick(); }  // a change goes out now, not at the next tick
});
document.addEventListener("keyup", e => { if (nw.held.delete(e.code)) tick(); });
window.addEventListener("blur", () => nw.held.clear());
stage.addEventListener("click", () => { stage.focus(); if (stage.requestPointerLock) stage.requestPointerLock(); });
document.addEventListener("pointerlockchange", () => {
  const locked = document.pointerLockElement === stage;
  stage.classList.toggle("locked", locked);
  if (!locked) { nw.held.delete("mouse0"); nw.held.delete("mouse2"); }
});
document.addEventListener("mousemove", e => {
  if (document.pointerLockElement === stage) { nw.mouseDx += e.movementX; nw.mouseDy += e.movementY; }
});
stage.addEventListener("mousedown", e => { if (document.pointerLockElement === stage) nw.held.add("mouse" + e.button); });
document.addEventListener("mouseup", e => nw.held.delete("mouse" + e.button));
stage.addEventListener("contextmenu", e => e.preventDefault());

// ---- frames -------------------------------------------------------------------------
let decoding = false, pending = null;
/** A frame from either transport: its header and a JPEG Blob (server) or ImageData (local). */
function showFrame(header, image) {
  pending = { header, image };
  if (!decoding) drawPending();  // a frame that arrives while one decodes replaces the waiting one
}
async function drawPending() {
  decoding = true;
  while (pending) {
    const { header, image } = pending;
    pending = null;
    try {
      if (image instanceof ImageData) {
        if (canvas.width !== image.width || canvas.height !== image.height) { canvas.width = image.width; canvas.height = image.height; }
        ctx.putImageData(image, 0, 0);
      } else {
        const bmp = await createImageBitmap(image);
        if (canvas.width !== bmp.width || canvas.height !== bmp.height) { canvas.width = bmp.width; canvas.height = bmp.height; }
        ctx.drawImage(bmp, 0, 0);
        bmp.close();
      }
    } catch (err) { nw.errors.push("frame decode: " + err); continue; }
    const now = performance.now();
    shownAt.push(now);
    const s = nw.stats;
    s.framesShown++;
    s.step = header.step;
    s.serverFps = header.server_fps;
    s.dropped = header.dropped;
    if (typeof header.t === "number") {
      const ms = now - header.t;
      s.latencyMs = s.latencyMs === null ? ms : 0.8 * s.latencyMs + 0.2 * ms;
    }
    nw.lastHeader = header;
    $("hud-step").textContent = header.step;
    $("hud-rec").hidden = header.recording === null;
    if (header.recording !== null) $("hud-rec-frames").textContent = header.recording;
    if (typeof header.reward === "number") {  // the world's heads (a server's frames carry them)
      $("hud-heads").hidden = false;
      $("hud-reward").textContent = header.reward.toFixed(2);
      $("hud-dead").hidden = !(header.termination > 0.5);
    }
    $("hud-autopilot").hidden = !header.autopilot;
  }
  decoding = false;
}
function updateHud() {
  const now = performance.now();
  while (shownAt.length && shownAt[0] < now - 1000) shownAt.shift();
  const s = nw.stats;
  s.fps = shownAt.length >= 2 ? (shownAt.length - 1) / ((shownAt[shownAt.length - 1] - shownAt[0]) / 1000) : 0;
  $("hud-fps").textContent = s.fps.toFixed(1);
  $("hud-latency").textContent = s.latencyMs === null ? "–" : s.latencyMs.toFixed(0);
}

// ---- messages -------------------------------------------------------------------------
function setStatus(text, isError) { const el = $("status"); el.textContent = text; el.classList.toggle("error", !!isError); }
function onMessage(msg) {
  nw.messages.push(msg);
  if (nw.messages.length > 100) nw.messages.shift();
  if (msg.type === "error") { nw.errors.push(msg.message); setStatus(msg.message, true); }
  else if (msg.type === "hello") setStatus(msg.local
    ? `playing in this browser (onnxruntime-web, ${msg.threads} thread${msg.threads === 1 ? "" : "s"}${msg.pipelined ? ", decoding beside" : ""})`
    : `playing as player ${msg.player}`);
  else if (msg.type === "reset") setStatus("reset");
  else if (msg.type === "autopilot") {
    $("autopilot").classList.toggle("on", msg.on);
    setStatus(msg.on ? "the agent plays (P gives control back)" : "you play");
  }
  else if (msg.type === "started") setStatus(`started from a ${msg.image[1]}×${msg.image[0]} image`);
  else if (msg.type === "recording") {
    const btn = $("record");
    btn.classList.toggle("on", msg.on);
    btn.textContent = msg.on ? "Stop" : "Record";
    if (!msg.on && msg.url) {
      nw.recordingUrl = msg.url;
      const a = $("download");
      a.href = msg.url; a.hidden = false; a.textContent = `download recording (${msg.frames} frames)`;
      if (msg.filename) a.download = msg.filename;
      setStatus(msg.note || "recording ready");
    } else if (msg.on) setStatus("recording…");
  }
}

/** The server transport: binary frames are uint32 LE header length, JSON header, JPEG. */
function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  nw.ws = ws;
  ws.onmessage = ev => {
    if (typeof ev.data === "string") return onMessage(JSON.parse(ev.data));
    const buf = ev.data, n = new DataView(buf).getUint32(0, true);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
    showFrame(header, new Blob([new Uint8Array(buf, 4 + n)], { type: "image/jpeg" }));
  };
  ws.onclose = ev => {
    const last = nw.errors[nw.errors.length - 1];
    const why = ev.reason || (ev.code === 1013 && last) || "";  // 1008 (an origin refused) says why
    setStatus(`disconnected${why ? ": " + why : ""} — reload to play again`, true);
  };
  return { send: msg => { if (ws.readyState === 1) ws.send(JSON.stringify(msg)); } };
}

/** world.json beside the page: a static export's manifest ("neuralworld-web"), the server's
 *  world ("neuralworld-play"), or null (a server older than world.json: ask /api/world). */
async function worldManifest() {
  if (location.protocol === "file:") throw new Error("open this folder through a web server, e.g. neuralworld play FOLDER");
  try {
    const r = await fetch("world.json", { cache: "no-cache" });
    const m = r.ok ? await r.json() : null;
    return m && (m.format === "neuralworld-web" || m.format === "neuralworld-play") ? m : null;
  } catch (err) { return null; }
}

// ---- buttons ---------------------------------------------------------------------------
$("reset").addEventListener("click", () => { nw.send({ type: "reset" }); stage.focus(); });
$("record").addEventListener("click", () => {
  nw.send({ type: "record", on: !$("record").classList.contains("on") });
  stage.focus();
});
function toggleAutopilot() { nw.send({ type: "autopilot", on: !$("autopilot").classList.contains("on") }); stage.focus(); }
$("autopilot").addEventListener("click", toggleAutopilot);
document.addEventListener("keydown", e => {
  if (e.code === "KeyP" && !$("autopilot").hidden && !(e.target instanceof HTMLInputElement) && !usesCode("KeyP")) toggleAutopilot();
});
$("start-image").addEventListener("change", async e => {
  const file = e.target.files[0];
  e.target.value = "";
  if (!file) return;
  try {
    // shrink big photos here, so an upload stays far below the server's message limit
    const bmp = await createImageBitmap(file);
    const [H, W] = nw.world.resolution;
    const scale = Math.min(1, Math.max(4 * H, 256) / Math.min(bmp.width, bmp.height));
    const c = document.createElement("canvas");
    c.width = Math.max(1, Math.round(bmp.width * scale)); c.height = Math.max(1, Math.round(bmp.height * scale));
    c.getContext("2d").drawImage(bmp, 0, 0, c.width, c.height);
    nw.send({ type: "start_image", data: c.toDataURL("image/png") });
    setStatus("sending image…");
  } catch (err) { setStatus("that file is not an image this browser can read", true); }
  stage.focus();
});

// ---- start -----------------------------------------------------------------------------
const scriptUrl = document.currentScript.src;
async function main() {
  const found = await worldManifest();
  const manifest = found && found.format === "neuralworld-web" ? found : null;  // plays in this browser
  const world = nw.world = found || await (await fetch("/api/world")).json();
  nw.bindings = buildBindings(world.spec, world.hints || {});
  const [H, W] = world.resolution;
  canvas.width = W; canvas.height = H;
  stage.style.aspectRatio = `${W} / ${H}`;
  $("hud-world").textContent = world.name;
  $("autopilot").hidden = !world.agent;  // `neuralworld play WORLD --agent AGENT`
  document.title = `${world.name} — neuralworld`;
  const names = c => c.replace(/^Key|^Digit/, "").replace("mouse0", "mouse button").replace("Arrow", "");
  const rows = [
    ...Object.entries(nw.bindings.buttons).map(([n, codes]) => `${n}: ${codes.map(names).join(" / ") || "gamepad"}`),
    ...Object.entries(nw.bindings.axes).map(([n, b]) =>
      `${n}: ${[b.mouse && "mouse " + b.mouse, b.neg.length && `${b.neg.map(names).join("/")} − , ${b.pos.map(names).join("/")} +`].filter(Boolean).join(" · ")}`),
  ];
  $("keys").replaceChildren(...rows.map(r => Object.assign(document.createElement("li"), { textContent: r })));
  if (manifest) {
    setStatus("loading the world…");
    const { openLocal } = await import(new URL("local.js", scriptUrl).href);
    nw.transport = await openLocal(manifest, new URL(".", location.href), { onFrame: showFrame, onMessage });
  } else nw.transport = connect();
  setInterval(tick, 1000 / world.fps);
  setInterval(updateHud, 250);
  stage.focus();
}
main().catch(err => { setStatus("could not load the world: " + err, true); nw.errors.push(String(err)); });
