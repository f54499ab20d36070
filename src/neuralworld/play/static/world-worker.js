// neuralworld in the browser: a world's rollout loop on onnxruntime-web (WebAssembly, CPU),
// in a Web Worker so the page stays responsive while the network runs.
//
// This is session.py's loop in JavaScript, step for step, over the graphs of
// `neuralworld export --web` (see play/export.py for the folder, onnx_export.py for the graphs):
//   prime:  for each start latent: (context noise) -> append (keys/values into the rings)
//   frame:  noise -> sampler (Euler/Heun over flow_times, calling the step graph) ->
//           context noise -> append -> decode -> RGBA
// The rings are DynamicsCache.push (model/dynamics.py) over typed arrays.
// A warp world (manifest "model": "warp", model/warp.py) runs the same loop with its own memory
// (WarpMemory: WarpCache's shift register of 8-bit frames and actions): one Euler step, frame =
// noise - velocity, the step's heads kept; append pushes the frame, quantised, and its action
// without a network call; the first push after a reset fills every slot. Its frames are its
// latents: no decoder or encoder graph (decode clamps and rounds, as PixelCodec).
// A field world (manifest "model": "field", model/field.py) keeps a camera pose instead
// (FieldMemory, FieldCache): the step graph renders where the action takes the camera and says
// where that is; append moves it there; the first frame after a reset is where it starts.
// Starting from an image runs the locate graph (the nearest bank pose: FieldNet.nearest).
// Noise: a seeded 32-bit generator (mulberry32) + Box-Muller, drawn in session.py's order;
// tests/test_web_export.py mirrors it in Python to check frames against PyTorch.
//
// The same file runs as a second, decoder-only worker (init {role: "decoder"}) where the page
// has a core to spare: the world makes frame t+1 while the decoder draws frame t.
//
// Messages in:  init {role: "world" | "decoder", base, manifest, seed, pace, threads, pipelined},
//               action {values, seq, t}, reset {seed?}, start_image {pixels (RGBA H*W*4), image: [h, w]},
//               pause, resume, rollout {actions: [[normalised]...], seed}; decoder: decode {header, latent}
// Messages out: ready {threads}, frame {header, pixels} (pixels transferred), or, pipelined,
//               latent {header, latent} for the decoder; reset/started {step},
//               rollout {frames: [Uint8ClampedArray], latents: [Float32Array], ms}, error {message}
"use strict";

let ort = null;       // the onnxruntime-web module, imported at init from the export's ort/
let M = null;         // the manifest (world.json)
let graphs = null;    // {step, decoder, encoder}: ort.InferenceSession
let mem = null;       // the rings
let rng = null;
let action = null;    // the latest action, normalised (Float32Array A)
let actionInfo = { seq: null, t: null, values: {} };
let requests = [];    // reset / start, applied between frames
let paused = false, pace = "world", looping = false, pipelined = false;
let step = 0, context = null;  // context: {latents: [Float32Array], actions: [Float32Array]} a reset primes from
const madeAt = [];

// ---- noise -------------------------------------------------------------------------
/** mulberry32: a 32-bit state, one uniform in [0, 1) per call. */
function makeRng(seed) {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6D2B79F5) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296;
  };
  return {
    uniform,
    /** n standard normal draws (Box-Muller, pairs in order; an odd n keeps no spare). */
    normal(n) {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i += 2) {
        const u1 = 1 - uniform(), u2 = uniform();  // u1 in (0, 1]: log is finite
        const r = Math.sqrt(-2 * Math.log(u1)), a = 2 * Math.PI * u2;
        out[i] = r * Math.cos(a);
        if (i + 1 < n) out[i + 1] = r * Math.sin(a);
      }
      return out;
    },
  };
}

// ---- memory: DynamicsCache with typed arrays --------------------------------------------
const numel = shape => shape.reduce((a, b) => a * b, 1);

class Memory {
  constructor(manifest) {
    const inputs = manifest.graphs.step.inputs;
    this.memoryFrames = manifest.memory.memory_frames;
    this.rings = {};
    for (const kind of ["full", "pooled"]) {
      const shape = inputs[kind + "_k"][0];  // (L, B, H, S, N, hd)
      const S = shape[3];
      const ring = {
        shape, S, block: shape[4] * shape[5], outer: shape[0] * shape[1] * shape[2], next: 0,
        k: new Float32Array(numel(shape)), v: new Float32Array(numel(shape)),
        age: BigInt64Array.from({ length: S }, (_, i) => BigInt(i + 1)),  // ages of empty slots don't matter
        valid: new Uint8Array(shape[1] * S),
      };
      ring.tensors = {
        [kind + "_k"]: new ort.Tensor("float32", ring.k, shape),
        [kind + "_v"]: new ort.Tensor("float32", ring.v, shape),
        [kind + "_age"]: new ort.Tensor("int64", ring.age, [S]),
        [kind + "_valid"]: new ort.Tensor("bool", ring.valid, [shape[1], S]),
      };
      this.rings[kind] = ring;
    }
    this.prev = "prev_latent" in inputs ? new Float32Array(numel(inputs.prev_latent[0])) : null;
    this.prevTensor = this.prev && new ort.Tensor("float32", this.prev, inputs.prev_latent[0]);
  }

  /** The cache's part of the step graph's feeds (the arrays are read at each run). */
  feeds() {
    const f = { ...this.rings.full.tensors, ...this.rings.pooled.tensors };
    if (this.prev) f.prev_latent = this.prevTensor;
    return f;
  }

  /** One sampler call (Dynamics.step): the velocity at (z, t), the rings read, not changed. */
  async velocity(z, t, act) { return (await runStep(z, t, act, ["velocity"])).velocity.data; }

  /** Dynamics.append: the step graph on the remembered latent, its keys/values into the rings. */
  async append(z, level, act) { this.push(await runStep(z, level, act, M.graphs.step.outputs), z); }

  /** Forget everything (DynamicsCache.reset): slots invalid, no previous frame. The rings also
   *  start over at slot 0 (DynamicsCache keeps its place): the attention sums then run in the
   *  same order after every reset, so a seed gives the same frames bit for bit. */
  reset() {
    for (const ring of Object.values(this.rings)) {
      ring.valid.fill(0);
      ring.next = 0;
      ring.age.forEach((_, i) => { ring.age[i] = BigInt(i + 1); });
    }
    if (this.prev) this.prev.fill(0);
  }

  /** DynamicsCache.push: the frame's keys/values (L, B, H, N, hd) into the oldest slot,
   *  ages up by one (clamped to memory_frames), its latent as the next prev_latent. */
  push(out, latent) {
    if (this.prev) this.prev.set(latent);
    for (const [kind, ring] of Object.entries(this.rings)) {
      if (ring.S === 0) continue;
      const s = ring.next, n = ring.block;
      const k = out[`new_${kind}_k`].data, v = out[`new_${kind}_v`].data;
      for (let i = 0; i < ring.outer; i++) {  // i runs over (L, B, H)
        ring.k.set(k.subarray(i * n, (i + 1) * n), (i * ring.S + s) * n);
        ring.v.set(v.subarray(i * n, (i + 1) * n), (i * ring.S + s) * n);
      }
      const cap = BigInt(this.memoryFrames);
      for (let j = 0; j < ring.S; j++) {
        const a = j === s ? 1n : ring.age[j] + 1n;
        ring.age[j] = a > cap ? cap : a;
      }
      for (let b = 0; b < ring.shape[1]; b++) ring.valid[b * ring.S + s] = 1;
      ring.next = (s + 1) % ring.S;
    }
  }
}

// ---- memory: WarpCache, a shift register of 8-bit frames -------------------------------------
const f32 = Math.fround;

/** model/warp.py's quantize in float32, as torch computes it: clamp, (x + 1) * 127.5 rounded
 *  half to even, / 127.5 - 1; so the frames remembered here are PyTorch's bit for bit. */
function quantize(x) {
  const v = f32(f32(Math.max(-1, Math.min(1, x)) + 1) * 127.5);
  let r = Math.round(v);
  if (r - v === 0.5 && r % 2 !== 0) r -= 1;  // a tie: to even, as torch.round
  return f32(f32(r / 127.5) - 1);
}

class WarpMemory {
  constructor(manifest) {
    const inputs = manifest.graphs.step.inputs;
    this.frameShape = inputs.frames[0];  // (1, M, 3, H, W)
    this.actionShape = inputs.actions[0];  // (1, M, A)
    this.slots = this.frameShape[1];
    this.frames = new Float32Array(numel(this.frameShape));
    this.actions = new Float32Array(numel(this.actionShape));
    this.tensors = {
      frames: new ort.Tensor("float32", this.frames, this.frameShape),
      actions: new ort.Tensor("float32", this.actions, this.actionShape),
    };
    this.empty = true;
    this.reward = 0;       // the last step's heads, as WarpCache keeps them for append
    this.termination = 0;
  }

  feeds() { return this.tensors; }

  reset() { this.empty = true; this.reward = 0; this.termination = 0; }

  /** WarpNet.step: one call; the heads are kept (append hands them back in Python). */
  async velocity(z, t, act) {
    const out = await runStep(z, t, act, M.graphs.step.outputs);
    this.reward = out.reward.data[0];
    this.termination = out.termination.data[0];
    return out.velocity.data;
  }

  /** WarpNet.append (WarpCache.push): roll one slot towards the past, the frame (quantised)
   *  and its action last; after a reset the first one fills every slot. No network call. */
  async append(z, level, act) {
    const n = this.frames.length / this.slots, A = act.length;
    const frame = new Float32Array(n);
    for (let j = 0; j < n; j++) frame[j] = quantize(z[j]);
    if (this.empty) {
      for (let s = 0; s < this.slots; s++) { this.frames.set(frame, s * n); this.actions.set(act, s * A); }
      this.empty = false;
    } else {
      this.frames.copyWithin(0, n);
      this.frames.set(frame, (this.slots - 1) * n);
      this.actions.copyWithin(0, A);
      this.actions.set(act, (this.slots - 1) * A);
    }
  }
}

// ---- memory: FieldCache, where the camera is ----------------------------------------------
class FieldMemory {
  constructor(manifest) {
    this.home = Float32Array.from(manifest.memory.start_pose);  // x, y, z, angle
    this.pose = Float32Array.from(this.home);
    // the last move (forward, left) and the walk (the speed its bob follows, frames since the start)
    this.moves = manifest.graphs.step.inputs.move[0][1];  // 4 (2 in an export from before the bob)
    this.move = new Float32Array(this.moves);
    this.fresh = true;
    this.stepped = null;  // {act, pose, move} of the last step
  }

  feeds() {
    return { pose: new ort.Tensor("float32", this.pose, [1, 4]), move: new ort.Tensor("float32", this.move, [1, this.moves]) };
  }

  reset() { this.pose.set(this.home); this.move.fill(0); this.fresh = true; this.stepped = null; }

  /** FieldNet.step: the frame at the pose the action leads to; that pose is kept for append. */
  async velocity(z, t, act) {
    const out = await runStep(z, t, act, M.graphs.step.outputs);
    this.stepped = { act: Float32Array.from(act), pose: out.new_pose.data.slice(), move: out.new_move.data.slice() };
    return out.velocity.data;
  }

  /** FieldNet.append: the camera moves where the action took it; the first frame after a reset
   *  is where it starts (it stays). No network call after a step of the same action. */
  async append(z, level, act) {
    if (this.fresh) { this.fresh = false; this.move.fill(0); this.stepped = null; return; }
    let s = this.stepped;
    if (!s || s.act.length !== act.length || s.act.some((v, i) => v !== act[i])) {
      const out = await runStep(z, level, act, ["new_pose", "new_move"]);
      s = { pose: out.new_pose.data, move: out.new_move.data };
    }
    this.pose.set(s.pose);
    this.move.set(s.move);
    this.stepped = null;
  }

  /** Start from an image (frame (3*H*W) in [-1, 1]): its place is the new home. */
  async locate(frame) {
    const [H, W] = M.resolution;
    const out = await graphs.locate.run({ frame: new ort.Tensor("float32", frame, [1, 3, H, W]) });
    this.home = Float32Array.from(out.pose.data);
  }
}

// ---- the world ---------------------------------------------------------------------------
function latentShape() { return [1, ...M.latent_shape]; }

async function runStep(latent, level, act, fetches) {
  const feeds = {
    latent: new ort.Tensor("float32", latent, latentShape()),
    action: new ort.Tensor("float32", act, [1, act.length]),
    ...mem.feeds(),
  };
  // a one-step generator's graph reads no noise level (the exporter drops the input)
  if ("noise_level" in M.graphs.step.inputs) feeds.noise_level = new ort.Tensor("float32", Float32Array.of(level), [1]);
  return graphs.step.run(feeds, fetches);
}

/** The sampler preset (model/sampler.py): Euler or Heun over flow_times, from noise at t = 1. */
async function sample(noise, act) {
  const { method, flow_times: ts } = M.sampler;
  const x = Float32Array.from(noise), n = x.length;
  const velocity = (z, t) => mem.velocity(z, t, act);
  for (let i = 0; i + 1 < ts.length; i++) {
    const t = ts[i], tn = ts[i + 1], dt = tn - t;
    const v = await velocity(x, t);
    if (method === "heun" && tn > 0) {
      const xp = new Float32Array(n);
      for (let j = 0; j < n; j++) xp[j] = x[j] + dt * v[j];
      const v2 = await velocity(xp, tn);
      for (let j = 0; j < n; j++) x[j] = x[j] + dt * 0.5 * (v[j] + v2[j]);
    } else {
      for (let j = 0; j < n; j++) x[j] = x[j] + dt * v[j];
    }
  }
  return x;
}

/** session._remember: noise the latent to the context level (training's augmentation), append. */
async function remember(latent, act) {
  const level = M.sampler.context_level;
  let z = latent;
  if (level > 0) {
    const eps = rng.normal(latent.length);
    z = new Float32Array(latent.length);
    for (let j = 0; j < z.length; j++) z[j] = (1 - level) * latent[j] + level * eps[j];
  }
  await mem.append(z, level, act);
}

/** Normalised latent -> RGBA pixels (H*W*4), as tensor_to_frames rounds them. A world without
 *  a decoder graph (warp: pixels are its latents) only clamps and rounds. */
async function decode(latent) {
  const f = graphs.decoder
    ? (await graphs.decoder.run({ latent: new ort.Tensor("float32", latent, latentShape()) })).frame.data : latent;
  const [H, W] = M.resolution, hw = H * W;
  const px = new Uint8ClampedArray(hw * 4);
  for (let i = 0; i < hw; i++) {
    for (let c = 0; c < 3; c++) px[i * 4 + c] = Math.round((Math.max(-1, Math.min(1, f[c * hw + i])) + 1) * 127.5);
    px[i * 4 + 3] = 255;
  }
  return px;
}

async function prime(ctx) {
  mem.reset();
  step = 0;
  for (let t = 0; t < ctx.latents.length; t++) await remember(ctx.latents[t], ctx.actions[t]);
}

/** session.step: the next frame's latent (normalised), remembered. */
async function makeLatent(act) {
  const latent = await sample(rng.normal(numel(M.latent_shape)), act);
  await remember(latent, act);
  step++;
  return latent;
}

/** {name: value} in the ActionSpec's units -> normalised vector (ActionSpec.normalize). */
function normalise(values) {
  const { spec, action: a } = M;
  const names = [...spec.buttons, ...spec.axes.map(x => x.name)];
  const out = Float32Array.from(a.noop);
  names.forEach((name, i) => {
    if (!(name in values)) return;
    let v = Number(values[name]);
    if (i >= spec.buttons.length) {
      const ax = spec.axes[i - spec.buttons.length];
      v = Math.max(ax.low, Math.min(ax.high, v));
    } else v = v ? 1 : 0;
    out[i] = a.normalize.scale[i] * v + a.normalize.offset[i];
  });
  return out;
}

async function loadStart(base) {
  const st = M.start;
  const buf = await (await fetch(new URL(st.file, base))).arrayBuffer();
  const L = numel(M.latent_shape), A = M.action.size;
  const latents = [], actions = [];
  for (let t = 0; t < st.frames; t++) {
    latents.push(new Float32Array(buf, st.latents.offset + t * L * 4, L).slice());
    actions.push(new Float32Array(buf, st.actions.offset + t * A * 4, A).slice());
  }
  return { latents, actions };
}

/** RGBA pixels (H, W, 4) of an image already fitted to the world -> a one-frame context. */
async function imageContext(pixels) {
  const [H, W] = M.resolution, hw = H * W;
  const x = new Float32Array(3 * hw);
  for (let i = 0; i < hw; i++) for (let c = 0; c < 3; c++) x[c * hw + i] = pixels[i * 4 + c] / 127.5 - 1;
  if (mem.locate) await mem.locate(x);  // a field world finds where the image was seen
  const latent = graphs.encoder ? (await graphs.encoder.run({ frame: new ort.Tensor("float32", x, [1, 3, H, W]) })).latent.data : x;
  return { latents: [Float32Array.from(latent)], actions: [Float32Array.from(M.action.noop)] };
}

// ---- the loop ----------------------------------------------------------------------------
const channel = new MessageChannel();
let wakeUp = null;
channel.port1.onmessage = () => { const w = wakeUp; wakeUp = null; if (w) w(); };
/** Let queued messages (actions, reset) in between frames; setTimeout(0) would add ~4 ms. */
const yieldToMessages = () => new Promise(r => { wakeUp = r; channel.port2.postMessage(0); });
const sleep = ms => new Promise(r => setTimeout(r, ms));

async function applyRequests() {
  while (requests.length) {
    const req = requests.shift();
    if (req.type === "reset") {
      if (req.seed !== undefined) rng = makeRng(req.seed);
      await prime(context);
      postMessage({ type: "reset", step });
    } else if (req.type === "start_image") {
      context = await imageContext(req.pixels);
      await prime(context);
      postMessage({ type: "started", step, image: req.image });
    }
  }
}

async function loop() {
  if (looping) return;
  looping = true;
  let nextAt = performance.now();
  try {
    while (!paused) {
      await applyRequests();
      const { seq, t, values } = actionInfo;
      const t0 = performance.now();
      const latent = await makeLatent(action);
      const pixels = pipelined ? null : await decode(latent);
      const now = performance.now();
      madeAt.push(now);
      while (madeAt.length > 32) madeAt.shift();
      const span = (madeAt[madeAt.length - 1] - madeAt[0]) / 1000;
      const [H, W] = M.resolution;
      const header = {
        type: "frame", step, seq, t, gen_ms: +(now - t0).toFixed(2),
        server_fps: span > 0 ? +((madeAt.length - 1) / span).toFixed(2) : null, dropped: 0,
        action: values, recording: null, width: W, height: H,
      };
      if (pipelined) postMessage({ type: "latent", header, latent }, [latent.buffer]);
      else postMessage({ type: "frame", header, pixels }, [pixels.buffer]);
      if (pace === "world") {
        nextAt += 1000 / M.fps;
        const delay = nextAt - performance.now();
        if (delay < 0) { nextAt = performance.now(); await yieldToMessages(); }  // behind: do not bank time
        else await sleep(delay);
      } else await yieldToMessages();
    }
  } catch (err) {
    postMessage({ type: "error", message: "the world stopped: " + (err && err.message ? err.message : err) });
  } finally {
    looping = false;
  }
}

/** A fixed rollout for tests and benchmarks: reseed, prime from the start context, one frame
 *  per action (normalised), every frame and latent returned. The live loop stays paused. */
async function rollout(actions, seed) {
  paused = true;
  while (looping) await sleep(5);
  rng = makeRng(seed);
  await prime(context);
  const frames = [], latents = [], t0 = performance.now();
  for (const a of actions) {
    const z = await makeLatent(Float32Array.from(a));
    frames.push(await decode(z));
    latents.push(z);
  }
  return { frames, latents, ms: performance.now() - t0 };
}

async function init(msg) {
  M = msg.manifest;
  pace = msg.pace || "world";
  pipelined = !!msg.pipelined;
  ort = await import(new URL(M.ort.dir + M.ort.module, msg.base).href);
  ort.env.wasm.wasmPaths = new URL(M.ort.dir, msg.base).href;
  ort.env.wasm.numThreads = msg.threads;
  ort.env.wasm.proxy = false;  // this worker already keeps the page free
  const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
  const open = async g => M.graphs[g] && ort.InferenceSession.create(  // null: no such graph (warp's codec)
    new Uint8Array(await (await fetch(new URL(M.graphs[g].file, msg.base))).arrayBuffer()), options);
  if (msg.role === "decoder") {
    graphs = { decoder: await open("decoder") };
    postMessage({ type: "ready", threads: ort.env.wasm.numThreads });
    return;
  }
  graphs = { step: await open("step"), decoder: await open("decoder"), encoder: await open("encoder"),
             locate: await open("locate") };
  mem = M.model === "warp" ? new WarpMemory(M) : M.model === "field" ? new FieldMemory(M) : new Memory(M);
  rng = makeRng(msg.seed);
  action = Float32Array.from(M.action.noop);
  context = await loadStart(msg.base);
  await prime(context);
  postMessage({ type: "ready", threads: ort.env.wasm.numThreads, step });
  loop();
}

onmessage = async ev => {
  const msg = ev.data;
  try {
    if (msg.type === "init") await init(msg);
    else if (msg.type === "decode") {
      const pixels = await decode(msg.latent);
      postMessage({ type: "frame", header: msg.header, pixels }, [pixels.buffer]);
    }
    else if (msg.type === "action") {
      action = normalise(msg.values);
      actionInfo = { seq: msg.seq, t: msg.t, values: msg.values };
    } else if (msg.type === "reset" || msg.type === "start_image") {
      if (requests.length >= 8) throw new Error(`too many requests waiting; ${msg.type} ignored`);
      requests.push(msg);
      if (paused) { await applyRequests(); }
    } else if (msg.type === "pause") paused = true;
    else if (msg.type === "resume") { paused = false; loop(); }
    else if (msg.type === "rollout") {
      const { frames, latents, ms } = await rollout(msg.actions, msg.seed);
      postMessage({ type: "rollout", frames, latents, ms }, [...frames, ...latents].map(f => f.buffer));
    }
  } catch (err) {
    postMessage({ type: "error", message: String(err && err.message ? err.message : err) });
  }
};
