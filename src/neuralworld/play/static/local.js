// The local transport: the world runs in this browser (world-worker.js, onnxruntime-web),
// speaking the same messages as the server's WebSocket (play/server.py), so app.js draws,
// reads the controls and shows the HUD the same way whichever transport feeds it.
//   send({type: "action" | "reset" | "start_image" | "record", ...})   as to the server
//   handlers.onFrame(header, ImageData), handlers.onMessage({type: "hello" | "reset" | ...})
// Where the machine has cores to spare, a second worker decodes frame t while the first makes
// frame t+1; a frame that waits for the decoder when a newer one comes is dropped (counted), as
// the server drops stale frames. Recording is done here (MediaRecorder on a scaled copy of the frames), since there is no
// server to write an mp4: the download is WebM (or MP4 where the browser records it).

const RECORD_MIN_SIDE = 256;  // recordings are scaled by whole pixels to at least this (as the server's)

/** The world described by `manifest` (world.json at `base`), played in a Web Worker. */
export async function openLocal(manifest, base, handlers) {
  const params = new URLSearchParams(location.search);
  // WebAssembly threads need cross-origin isolation (COOP/COEP headers); a plain static server gives 1
  const workerThreads = self.crossOriginIsolated ? Math.max(1, Math.min(4, (navigator.hardwareConcurrency || 2) >> 1)) : 1;
  const url = new URL("world-worker.js", import.meta.url);
  const worker = new Worker(url, { type: "module" });
  // (a world without a decoder graph, the warp world, only rounds pixels: nothing to overlap)
  const pipelined = params.has("pipeline") ? params.get("pipeline") !== "0"
    : (navigator.hardwareConcurrency || 1) >= 2 && !!manifest.graphs.decoder;
  const decoder = pipelined ? new Worker(url, { type: "module" }) : null;
  const [H, W] = manifest.resolution;
  let recorder = null, recording = null, ready = false, decoderReady = !decoder, threads = 1;
  let decoding = false, waitingLatent = null, dropped = 0;
  const waiting = {};  // replies awaited by request type (rollout)

  function fail(message) { handlers.onMessage({ type: "error", message }); }

  function show(msg) {
    const image = new ImageData(msg.pixels, W, H);
    if (recording) { recording.draw(image); msg.header.recording = recording.frames; }
    msg.header.dropped = dropped;
    handlers.onFrame(msg.header, image);
  }
  function hello() {
    if (ready && decoderReady) handlers.onMessage({ type: "hello", player: "local", local: true, threads, pipelined,
                                                     world: manifest.name, resolution: [H, W], fps: manifest.fps });
  }
  function toDecoder(msg) {
    if (decoding) { if (waitingLatent) dropped++; waitingLatent = msg; return; }  // the newest waits, a stale one goes
    decoding = true;
    decoder.postMessage({ type: "decode", header: msg.header, latent: msg.latent }, [msg.latent.buffer]);
  }
  if (decoder) {
    decoder.onerror = ev => fail("the decoder's worker failed: " + (ev.message || "see the console"));
    decoder.onmessage = ev => {
      const msg = ev.data;
      if (msg.type === "frame") {
        decoding = false;
        show(msg);
        if (waitingLatent) { const next = waitingLatent; waitingLatent = null; toDecoder(next); }
      } else if (msg.type === "ready") { decoderReady = true; hello(); }
      else handlers.onMessage(msg);
    };
  }

  worker.onerror = ev => fail("the world's worker failed: " + (ev.message || "see the console"));
  worker.onmessage = ev => {
    const msg = ev.data;
    if (msg.type === "frame") show(msg);
    else if (msg.type === "latent") toDecoder(msg);
    else if (msg.type === "ready") { ready = true; threads = msg.threads; hello(); }
    else if (waiting[msg.type]) {
      waiting[msg.type](msg);
      delete waiting[msg.type];
    } else handlers.onMessage(msg);
  };

  /** Cover-and-centre-crop an image to the world's size (session.fit_frame's rule). */
  async function fitted(dataUrl) {
    const img = new Image();
    img.src = dataUrl;  // a data: URL: decoded here, nothing fetched
    await img.decode();
    const scale = Math.max(H / img.naturalHeight, W / img.naturalWidth);
    const w = img.naturalWidth * scale, h = img.naturalHeight * scale;
    const c = document.createElement("canvas");
    c.width = W; c.height = H;
    const g = c.getContext("2d");
    g.imageSmoothingQuality = "high";
    g.drawImage(img, (W - w) / 2, (H - h) / 2, w, h);
    return { pixels: g.getImageData(0, 0, W, H).data, image: [img.naturalHeight, img.naturalWidth] };
  }

  function startRecording() {
    const k = Math.max(1, Math.ceil(RECORD_MIN_SIDE / Math.min(H, W)));
    const c = document.createElement("canvas");
    c.width = W * k; c.height = H * k;
    const g = c.getContext("2d");
    g.imageSmoothingEnabled = false;
    const small = document.createElement("canvas");
    small.width = W; small.height = H;
    const type = ["video/mp4;codecs=avc1", "video/webm;codecs=vp9", "video/webm;codecs=vp8", "video/webm"]
      .find(t => window.MediaRecorder && MediaRecorder.isTypeSupported(t));
    if (!type) { fail("this browser cannot record video (no MediaRecorder)"); return false; }
    const chunks = [];
    recorder = new MediaRecorder(c.captureStream(manifest.fps), { mimeType: type });
    recorder.ondataavailable = e => { if (e.data.size) chunks.push(e.data); };
    recorder.start();
    recording = {
      frames: 0, type, chunks,
      draw(image) {
        small.getContext("2d").putImageData(image, 0, 0);
        g.drawImage(small, 0, 0, c.width, c.height);
        this.frames++;
      },
    };
    return true;
  }

  function stopRecording() {
    const rec = recording;
    recording = null;
    if (!rec || !recorder) {
      handlers.onMessage({ type: "recording", on: false, url: null, frames: 0, note: "nothing was recording" });
      return;
    }
    recorder.onstop = () => {
      const blob = new Blob(rec.chunks, { type: rec.type.split(";")[0] });
      const ext = rec.type.startsWith("video/mp4") ? "mp4" : "webm";
      handlers.onMessage({ type: "recording", on: false, url: URL.createObjectURL(blob), frames: rec.frames,
                           filename: `${manifest.name || "neuralworld"}-recording.${ext}`,
                           note: `recording ready (${ext}, made in this browser)` });
    };
    recorder.stop();
    recorder = null;
  }

  const transport = {
    local: true,
    manifest,
    worker,
    get ready() { return ready; },
    async send(msg) {
      try {
        if (msg.type === "action") worker.postMessage({ type: "action", values: { ...msg.buttons, ...msg.axes }, seq: msg.seq, t: msg.t });
        else if (msg.type === "reset") worker.postMessage({ type: "reset" });
        else if (msg.type === "start_image") worker.postMessage({ type: "start_image", ...(await fitted(msg.data)) });
        else if (msg.type === "record") {
          if (msg.on && !recording) { if (startRecording()) handlers.onMessage({ type: "recording", on: true }); }
          else if (!msg.on) stopRecording();
        }
      } catch (err) { fail(`${msg.type}: ${err && err.message ? err.message : err}`); }
    },
    /** Pause the live loop, reseed, prime, and make one frame per normalised action:
     *  {frames: [Uint8ClampedArray RGBA], latents: [Float32Array], ms}. For tests and benchmarks. */
    rollout(actions, seed = 0) {
      return new Promise(resolve => { waiting.rollout = resolve; worker.postMessage({ type: "rollout", actions, seed }); });
    },
    pause() { worker.postMessage({ type: "pause" }); },
    resume() { worker.postMessage({ type: "resume" }); },
  };
  const init = { type: "init", manifest, base: String(base), threads: workerThreads };
  worker.postMessage({ ...init, role: "world", pipelined, seed: Number(params.get("seed") || 0),
                       pace: params.get("pace") === "max" ? "max" : "world" });
  if (decoder) decoder.postMessage({ ...init, role: "decoder" });
  return transport;
}
