// YOLO-Toys live demo: grabs frames from a webcam or a local video, sends them as JPEG over
// WS /ws/stream (docs/streaming.md) and draws the results over the video.
// Plain ES module, no dependencies, no build step.

const TASKS = ["detect", "segment", "pose", "classify", "obb"];
const MAX_IN_FLIGHT = 2; // frames sent and not answered yet
const MAX_SIDE = 640; // downscale the sent frame to this long side (when the checkbox is on)
const JPEG_QUALITY = 0.8;
const PENDING_TIMEOUT_MS = 10000; // forget a frame never answered (lost, or dropped by the server)
const KEYPOINT_MIN_SCORE = 0.3;
const MAX_ERRORS_SHOWN = 50;
const MAX_ERRORS_KEPT = 500;
const TRACKED_TASKS = ["detect", "segment", "pose"]; // the server tracks these (yolo_toys/tasks.py)
// Access control (yolo_toys/access.py): a browser cannot set headers on a WebSocket, so the key
// travels as a subprotocol beside `yolo-toys`, which the server selects.
const KEY_STORAGE = "yolo-toys.api-key";
const PROTOCOL = "yolo-toys";
const KEY_PROTOCOL = "yolo-toys.key.";
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/; // what a subprotocol may hold (an HTTP token)

const KEYPOINT_NAMES = [
  "nose", "left_eye", "right_eye", "left_ear", "right_ear",
  "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
  "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
];
const SKELETON = [
  ["left_ankle", "left_knee"], ["left_knee", "left_hip"], ["right_ankle", "right_knee"],
  ["right_knee", "right_hip"], ["left_hip", "right_hip"], ["left_shoulder", "left_hip"],
  ["right_shoulder", "right_hip"], ["left_shoulder", "right_shoulder"], ["left_shoulder", "left_elbow"],
  ["right_shoulder", "right_elbow"], ["left_elbow", "left_wrist"], ["right_elbow", "right_wrist"],
  ["left_eye", "right_eye"], ["nose", "left_eye"], ["nose", "right_eye"], ["left_eye", "left_ear"],
  ["right_eye", "right_ear"], ["left_ear", "left_shoulder"], ["right_ear", "right_shoulder"],
];
const PALETTE = [
  "#ff3838", "#ff9d97", "#ff701f", "#ffb21d", "#cfd231", "#48f90a", "#92cc17", "#3ddb86", "#1a9334", "#00d4bb",
  "#2c99a8", "#00c2ff", "#344593", "#6473ff", "#0018ec", "#8438ff", "#520085", "#cb38ff", "#ff95c8", "#ff37c7",
];

const $ = (id) => document.getElementById(id);
const ui = {
  keyLabel: $("key-label"), apiKey: $("api-key"),
  status: $("status"), source: $("source"), fileLabel: $("file-label"), file: $("file"), task: $("task"),
  model: $("model"), promptsLabel: $("prompts-label"), prompts: $("prompts"), conf: $("conf"),
  confValue: $("conf-value"), tracking: $("tracking"), downscale: $("downscale"), start: $("start"),
  stage: $("stage"), video: $("video"), overlay: $("overlay"), placeholder: $("placeholder"),
  classes: $("classes"), errorLog: $("error-log"),
  fps: $("stat-fps"), latency: $("stat-latency"), server: $("stat-server"), queue: $("stat-queue"),
  results: $("stat-results"), objects: $("stat-objects"), dropped: $("stat-dropped"), sent: $("stat-sent"),
  size: $("stat-size"), modelInForce: $("stat-model"), errors: $("stat-errors"),
};

// The test hook: updated in place as results arrive.
const stats = {
  results: 0, boxesDrawn: 0, lastResult: null, lastMessage: null, errors: [], errorCount: 0, connected: false,
  sent: 0, dropped: 0, fps: 0, latencyMs: null, serverMs: null, queueMs: null, labels: [], config: null,
  protocol: null,
};
window.demoStats = stats;

const state = {
  apiKey: "", // sent as X-API-Key and in the WebSocket handshake; kept in sessionStorage
  models: new Map(), // name -> ModelInfo
  running: false,
  ws: null,
  reconnectTimer: null,
  stream: null, // MediaStream of the webcam
  fileUrl: null,
  rafId: 0,
  encoding: false,
  nextFrameId: 0,
  pending: new Map(), // frame id -> performance.now() when sent
  resultTimes: [], // performance.now() of recent results, for the FPS
  lastFpsUpdate: 0,
  lastDrawn: null, // last result drawn, redrawn on resize
  videoFrames: 0, // frames presented by the video (requestVideoFrameCallback), to skip repeats
  sentVideoFrame: -1,
  sourceGeneration: 0,
};
const HAS_RVFC = "requestVideoFrameCallback" in HTMLVideoElement.prototype;

const grabCanvas = document.createElement("canvas");
const grabCtx = grabCanvas.getContext("2d");
const ctx = ui.overlay.getContext("2d");

// ---- API key ------------------------------------------------------------------------------------

// A key in the page's URL (`/demo?api_key=...`) moves to sessionStorage and out of the address bar.
function adoptKey() {
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("api_key");
  if (fromUrl !== null) {
    params.delete("api_key");
    const query = params.toString();
    history.replaceState(null, "", `${location.pathname}${query ? `?${query}` : ""}${location.hash}`);
  }
  let stored = "";
  try {
    stored = sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    // storage disabled: the key lives in the page only
  }
  setKey(fromUrl !== null ? fromUrl.trim() : stored);
  ui.apiKey.value = state.apiKey;
  ui.keyLabel.hidden = !state.apiKey;
}

function setKey(key) {
  state.apiKey = key;
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // storage disabled
  }
}

function authHeaders() {
  return state.apiKey ? { "X-API-Key": state.apiKey } : {};
}

// ---- settings ---------------------------------------------------------------------------------

async function loadModels() {
  let models = [];
  try {
    const response = await fetch("/models", { headers: { Accept: "application/json", ...authHeaders() } });
    if (response.status === 401) {
      ui.keyLabel.hidden = false;
      throw new Error(state.apiKey ? "the API key was refused" : "this server needs an API key: enter it above");
    }
    if (!response.ok) throw new Error(`GET /models: HTTP ${response.status}`);
    models = (await response.json()).models || [];
  } catch (err) {
    reportError("cannot list models", String(err));
  }
  const loaded = models.filter((m) => m.loaded && TASKS.includes(m.task));
  state.models = new Map(loaded.map((m) => [m.name, m]));
  ui.model.replaceChildren();
  for (const task of TASKS) {
    const ofTask = loaded.filter((m) => m.task === task);
    const taskOption = ui.task.querySelector(`option[value="${task}"]`);
    taskOption.disabled = ofTask.length === 0;
    taskOption.textContent = ofTask.length ? task : `${task} (no model loaded)`;
    if (!ofTask.length) continue;
    const group = document.createElement("optgroup");
    group.label = task;
    for (const m of ofTask) {
      const option = document.createElement("option");
      option.value = m.name;
      option.dataset.task = task;
      option.textContent = `${m.name}${m.default ? " ★" : ""}`;
      option.title = `${m.family}${m.format ? `, ${m.format}` : ""}${m.device ? ` on ${m.device}` : ""}`;
      group.append(option);
    }
    ui.model.append(group);
  }
  if (!loaded.length) {
    const option = new Option("server default", "");
    ui.model.append(option);
  }
  const firstTask = TASKS.find((t) => loaded.some((m) => m.task === t)) || "detect";
  ui.task.value = firstTask;
  selectDefaultModel(firstTask);
  syncControls();
  ui.start.disabled = false;
}

function selectDefaultModel(task) {
  const ofTask = [...state.models.values()].filter((m) => m.task === task);
  const pick = ofTask.find((m) => m.default) || ofTask[0];
  if (pick) ui.model.value = pick.name;
}

function currentModel() {
  return state.models.get(ui.model.value) || null;
}

function syncControls() {
  const model = currentModel();
  ui.promptsLabel.hidden = !(model && model.open_vocabulary);
  ui.tracking.disabled = !TRACKED_TASKS.includes(ui.task.value);
  ui.conf.disabled = ui.task.value === "classify";
  ui.fileLabel.hidden = ui.source.value !== "file";
}

function buildConfig() {
  const config = { type: "config", task: ui.task.value };
  const model = currentModel();
  if (model) config.model = model.name;
  if (ui.task.value !== "classify") {
    config.conf = Number(ui.conf.value);
    config.tracking = ui.tracking.checked && TRACKED_TASKS.includes(ui.task.value);
  }
  if (model && model.open_vocabulary) {
    config.prompts = ui.prompts.value.split(",").map((p) => p.trim()).filter(Boolean);
  }
  return config;
}

function sendConfig() {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(buildConfig()));
  }
}

function settingsChanged() {
  syncControls();
  state.lastDrawn = null;
  clearOverlay();
  ui.classes.hidden = true;
  sendConfig();
}

// ---- sources ----------------------------------------------------------------------------------

async function startSource() {
  stopSource();
  const video = ui.video;
  if (ui.source.value === "webcam") {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("no camera access here: the page needs https or localhost");
    }
    state.stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 720 } }, audio: false,
    });
    video.srcObject = state.stream;
    video.loop = false;
  } else {
    const file = ui.file.files && ui.file.files[0];
    if (!file) throw new Error("choose a video file first");
    state.fileUrl = URL.createObjectURL(file);
    video.srcObject = null;
    video.src = state.fileUrl;
    video.loop = true;
  }
  video.muted = true;
  if (HAS_RVFC) {
    const generation = ++state.sourceGeneration;
    const onFrame = () => {
      if (generation !== state.sourceGeneration) return; // an older source's callback chain ends
      state.videoFrames += 1;
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }
  await video.play();
  ui.placeholder.hidden = true;
}

function stopSource() {
  const video = ui.video;
  state.sourceGeneration += 1;
  video.pause();
  if (state.stream) {
    for (const track of state.stream.getTracks()) track.stop();
    state.stream = null;
  }
  video.srcObject = null;
  if (state.fileUrl) {
    URL.revokeObjectURL(state.fileUrl);
    state.fileUrl = null;
  }
  video.removeAttribute("src");
  video.load();
}

// ---- connection ---------------------------------------------------------------------------------

function streamUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // A key a subprotocol cannot hold goes in the query string (which servers and proxies may log).
  const key = state.apiKey;
  const query = key && !TOKEN.test(key) ? `?api_key=${encodeURIComponent(key)}` : "";
  return `${scheme}//${location.host}/ws/stream${query}`;
}

function streamProtocols() {
  const key = state.apiKey;
  return key && TOKEN.test(key) ? [PROTOCOL, KEY_PROTOCOL + key] : [PROTOCOL];
}

function setStatus(text, kind) {
  ui.status.textContent = text;
  ui.status.dataset.state = kind;
}

function connect() {
  clearTimeout(state.reconnectTimer);
  setStatus("connecting…", "connecting");
  const ws = new WebSocket(streamUrl(), streamProtocols());
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  let opened = false;
  ws.onopen = () => {
    if (state.ws !== ws) return;
    opened = true;
    stats.connected = true;
    stats.protocol = ws.protocol;
    setStatus("connected", "connected");
    ws.send(JSON.stringify(buildConfig()));
  };
  ws.onmessage = (event) => {
    if (state.ws !== ws || typeof event.data !== "string") return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      reportError("unreadable message from the server", String(event.data).slice(0, 200));
      return;
    }
    onMessage(message);
  };
  ws.onclose = (event) => {
    if (state.ws !== ws) return;
    stats.connected = false;
    state.ws = null;
    state.pending.clear();
    state.encoding = false;
    if (!state.running) {
      setStatus("idle", "idle");
      return;
    }
    let why = event.code === 1013 ? "server busy (1013)" : `closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`;
    if (!opened && event.code === 1006) why = "refused by the server (API key or page origin?)";
    reportError("connection lost", why);
    setStatus(`${why}, reconnecting…`, "error");
    state.reconnectTimer = setTimeout(() => state.running && connect(), event.code === 1013 ? 3000 : 1500);
  };
}

function disconnect() {
  clearTimeout(state.reconnectTimer);
  const ws = state.ws;
  state.ws = null;
  stats.connected = false;
  state.pending.clear();
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "stopped");
}

function onMessage(message) {
  switch (message.type) {
    case "result":
      onResult(message);
      break;
    case "error":
      if (message.frame_id !== undefined && message.frame_id !== null) state.pending.delete(message.frame_id);
      reportError(message.error || "error", message.detail, message.frame_id);
      break;
    case "config":
      stats.config = message.config || null;
      if (stats.config && stats.config.model) ui.modelInForce.textContent = stats.config.model;
      break;
    default:
      break; // pong and anything newer
  }
}

function onResult(message) {
  const now = performance.now();
  const id = message.frame_id;
  const sentAt = state.pending.get(id);
  // A result for frame N settles every older frame: answered before, or dropped by the server.
  for (const pendingId of [...state.pending.keys()]) if (pendingId <= id) state.pending.delete(pendingId);
  stats.results += 1;
  stats.lastMessage = message;
  stats.lastResult = message.result || null;
  stats.latencyMs = sentAt === undefined ? null : now - sentAt;
  stats.serverMs = typeof message.server_ms === "number" ? message.server_ms : null;
  stats.queueMs = typeof message.queue_ms === "number" ? message.queue_ms : null;
  if (typeof message.dropped === "number") stats.dropped = message.dropped;
  state.resultTimes.push(now);
  if (message.result) {
    rememberLabels(message.result);
    drawResult(message.result);
  }
  updateStats(now);
}

function rememberLabels(result) {
  const items = result.detections || result.instances || result.top_k || [];
  for (const item of items) {
    if (item.label && !stats.labels.includes(item.label)) stats.labels.push(item.label);
  }
}

function reportError(error, detail, frameId) {
  let text = String(error);
  if (detail !== undefined && detail !== null && detail !== "") {
    text += `: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`;
  }
  if (frameId !== undefined && frameId !== null) text += ` (frame ${frameId})`;
  stats.errors.push(text);
  if (stats.errors.length > MAX_ERRORS_KEPT) stats.errors.splice(0, stats.errors.length - MAX_ERRORS_KEPT);
  stats.errorCount = (stats.errorCount || 0) + 1;
  console.warn("[demo]", text);
  ui.errors.textContent = String(stats.errorCount);
  const item = document.createElement("li");
  item.textContent = text;
  ui.errorLog.prepend(item);
  while (ui.errorLog.children.length > MAX_ERRORS_SHOWN) ui.errorLog.lastElementChild.remove();
}

// ---- frame loop ---------------------------------------------------------------------------------

function tick(now) {
  if (!state.running) return;
  state.rafId = requestAnimationFrame(tick);
  for (const [id, sentAt] of state.pending) if (now - sentAt > PENDING_TIMEOUT_MS) state.pending.delete(id);
  if (now - state.lastFpsUpdate > 500) updateStats(now);
  const video = ui.video;
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || state.encoding) return;
  if (state.pending.size >= MAX_IN_FLIGHT) return;
  if (video.readyState < HTMLMediaElement.HAVE_CURRENT_DATA || !video.videoWidth) return;
  if (HAS_RVFC && state.videoFrames === state.sentVideoFrame) return; // same picture as last sent
  state.sentVideoFrame = state.videoFrames;
  grabAndSend(video, ws);
}

function grabAndSend(video, ws) {
  let width = video.videoWidth;
  let height = video.videoHeight;
  const longSide = Math.max(width, height);
  if (ui.downscale.checked && longSide > MAX_SIDE) {
    width = Math.round((width * MAX_SIDE) / longSide);
    height = Math.round((height * MAX_SIDE) / longSide);
  }
  if (grabCanvas.width !== width || grabCanvas.height !== height) {
    grabCanvas.width = width;
    grabCanvas.height = height;
  }
  grabCtx.drawImage(video, 0, 0, width, height);
  state.encoding = true;
  grabCanvas.toBlob(
    (blob) => {
      state.encoding = false;
      if (!blob || state.ws !== ws || ws.readyState !== WebSocket.OPEN) return;
      const id = state.nextFrameId++;
      ws.send(JSON.stringify({ type: "frame", id }));
      ws.send(blob);
      state.pending.set(id, performance.now());
      stats.sent += 1;
      ui.size.textContent = `${width}×${height}`;
    },
    "image/jpeg",
    JPEG_QUALITY,
  );
}

function updateStats(now) {
  state.lastFpsUpdate = now;
  const times = state.resultTimes;
  while (times.length && now - times[0] > 2000) times.shift();
  stats.fps = times.length >= 2 ? ((times.length - 1) * 1000) / Math.max(now - times[0], 1) : 0;
  ui.fps.textContent = stats.fps.toFixed(1);
  ui.latency.textContent = stats.latencyMs === null ? "–" : `${stats.latencyMs.toFixed(0)} ms`;
  ui.server.textContent = stats.serverMs === null ? "–" : `${stats.serverMs.toFixed(0)} ms`;
  ui.queue.textContent = stats.queueMs === null ? "–" : `${stats.queueMs.toFixed(0)} ms`;
  ui.results.textContent = String(stats.results);
  ui.dropped.textContent = String(stats.dropped);
  ui.sent.textContent = String(stats.sent);
}

// ---- drawing ------------------------------------------------------------------------------------

function colorFor(item) {
  const key = item.track_id ?? item.class_id ?? 0;
  return PALETTE[((key % PALETTE.length) + PALETTE.length) % PALETTE.length];
}

function clearOverlay() {
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, ui.overlay.width, ui.overlay.height);
}

// Size the overlay to its box (device pixels) and map frame pixels onto the displayed video.
function prepareOverlay(image) {
  const canvas = ui.overlay;
  const dpr = window.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth;
  const cssHeight = canvas.clientHeight;
  const width = Math.max(1, Math.round(cssWidth * dpr));
  const height = Math.max(1, Math.round(cssHeight * dpr));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  clearOverlay();
  // The video is drawn with object-fit: contain; the result is in pixels of the frame we sent.
  const videoWidth = ui.video.videoWidth || image.width;
  const videoHeight = ui.video.videoHeight || image.height;
  const fit = Math.min(cssWidth / videoWidth, cssHeight / videoHeight);
  const offsetX = (cssWidth - videoWidth * fit) / 2;
  const offsetY = (cssHeight - videoHeight * fit) / 2;
  const sx = (videoWidth * fit) / image.width;
  const sy = (videoHeight * fit) / image.height;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0); // draw in CSS pixels
  return {
    x: (x) => offsetX + x * sx,
    y: (y) => offsetY + y * sy,
    scale: Math.min(sx, sy),
  };
}

function drawResult(result, count = true) {
  state.lastDrawn = result;
  if (!result.image || !result.image.width || !result.image.height) return;
  const map = prepareOverlay(result.image);
  let drawn = 0;
  if (Array.isArray(result.detections)) {
    for (const det of result.detections) {
      if (det.rbox && Array.isArray(det.rbox.corners)) {
        drawPolygon(det.rbox.corners, map, colorFor(det), 0.12);
        const [x, y] = topMost(det.rbox.corners);
        drawLabel(labelText(det), map.x(x), map.y(y), colorFor(det));
      } else if (det.box) {
        drawBox(det, map);
      }
      drawn += 1;
    }
  }
  if (Array.isArray(result.instances)) {
    for (const inst of result.instances) {
      const color = colorFor(inst);
      for (const polygon of inst.polygons || []) drawPolygon(polygon, map, color, 0.35);
      if (Array.isArray(inst.keypoints)) drawSkeleton(inst.keypoints, map, color);
      if (inst.box) drawBox(inst, map);
      drawn += 1;
    }
  }
  if (Array.isArray(result.top_k)) {
    showClasses(result.top_k);
    const best = result.top_k[0];
    if (best) drawLabel(`${best.label} ${best.score.toFixed(2)}`, 8, 8 + 22, PALETTE[best.class_id % PALETTE.length] || PALETTE[0]);
  } else {
    ui.classes.hidden = true;
  }
  if (count) stats.boxesDrawn += drawn;
  ui.objects.textContent = String(drawn);
}

function labelText(item) {
  let text = `${item.label} ${Number(item.score).toFixed(2)}`;
  if (item.track_id !== undefined && item.track_id !== null) text += ` #${item.track_id}`;
  return text;
}

function drawBox(item, map) {
  const { x1, y1, x2, y2 } = item.box;
  const color = colorFor(item);
  const left = map.x(x1);
  const top = map.y(y1);
  ctx.lineWidth = 2;
  ctx.strokeStyle = color;
  ctx.strokeRect(left, top, map.x(x2) - left, map.y(y2) - top);
  drawLabel(labelText(item), left, top, color);
}

function drawPolygon(points, map, color, fillAlpha) {
  if (!points || points.length < 2) return;
  ctx.beginPath();
  points.forEach(([x, y], i) => (i === 0 ? ctx.moveTo(map.x(x), map.y(y)) : ctx.lineTo(map.x(x), map.y(y))));
  ctx.closePath();
  ctx.globalAlpha = fillAlpha;
  ctx.fillStyle = color;
  ctx.fill();
  ctx.globalAlpha = 1;
  ctx.lineWidth = 2;
  ctx.strokeStyle = color;
  ctx.stroke();
}

function topMost(points) {
  return points.reduce((best, p) => (p[1] < best[1] ? p : best), points[0]);
}

function drawLabel(text, x, y, color) {
  ctx.font = "600 13px system-ui, sans-serif";
  const padding = 4;
  const height = 18;
  const width = ctx.measureText(text).width + padding * 2;
  const canvasWidth = ui.overlay.clientWidth;
  const left = Math.max(0, Math.min(x, canvasWidth - width));
  const top = y - height < 0 ? y : y - height; // inside the box when there is no room above
  ctx.fillStyle = color;
  ctx.fillRect(left, top, width, height);
  ctx.fillStyle = textColorOn(color);
  ctx.textBaseline = "middle";
  ctx.fillText(text, left + padding, top + height / 2 + 1);
}

function textColorOn(hex) {
  const n = parseInt(hex.slice(1), 16);
  const luminance = 0.299 * ((n >> 16) & 255) + 0.587 * ((n >> 8) & 255) + 0.114 * (n & 255);
  return luminance > 150 ? "#000" : "#fff";
}

function drawSkeleton(keypoints, map, color) {
  const byName = new Map();
  keypoints.forEach((kp, i) => {
    const name = kp.name || KEYPOINT_NAMES[i];
    if (kp.score >= KEYPOINT_MIN_SCORE && !(kp.x === 0 && kp.y === 0)) byName.set(name, kp);
  });
  ctx.lineWidth = 3;
  for (const [a, b] of SKELETON) {
    const p = byName.get(a);
    const q = byName.get(b);
    if (!p || !q) continue;
    ctx.strokeStyle = a.startsWith("left") || b.startsWith("left") ? "#3b9cff" : a.startsWith("right") ? "#ff9d3b" : color;
    ctx.beginPath();
    ctx.moveTo(map.x(p.x), map.y(p.y));
    ctx.lineTo(map.x(q.x), map.y(q.y));
    ctx.stroke();
  }
  for (const kp of byName.values()) {
    ctx.beginPath();
    ctx.arc(map.x(kp.x), map.y(kp.y), 3.5, 0, Math.PI * 2);
    ctx.fillStyle = "#fff";
    ctx.fill();
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = color;
    ctx.stroke();
  }
}

function showClasses(topK) {
  ui.classes.replaceChildren();
  for (const c of topK) {
    const label = document.createElement("span");
    label.textContent = c.label;
    const track = document.createElement("span");
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(0, Math.min(1, c.score)) * 100}%`;
    track.append(bar);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = c.score.toFixed(3);
    ui.classes.append(label, track, score);
  }
  ui.classes.hidden = false;
}

// ---- start / stop -------------------------------------------------------------------------------

async function start() {
  ui.start.disabled = true;
  try {
    await startSource();
  } catch (err) {
    reportError("cannot start the source", err && err.message ? err.message : String(err));
    setStatus("source error", "error");
    ui.start.disabled = false;
    return;
  }
  state.running = true;
  ui.start.textContent = "Stop";
  ui.start.classList.add("running");
  ui.start.disabled = false;
  connect();
  state.rafId = requestAnimationFrame(tick);
}

function stop() {
  state.running = false;
  cancelAnimationFrame(state.rafId);
  disconnect();
  stopSource();
  clearOverlay();
  state.lastDrawn = null;
  ui.classes.hidden = true;
  ui.placeholder.hidden = false;
  ui.start.textContent = "Start";
  ui.start.classList.remove("running");
  setStatus("idle", "idle");
}

async function restartSource() {
  if (!state.running) return;
  try {
    await startSource();
  } catch (err) {
    reportError("cannot start the source", err && err.message ? err.message : String(err));
  }
}

// ---- wiring -------------------------------------------------------------------------------------

ui.start.addEventListener("click", () => (state.running ? stop() : start()));
ui.apiKey.addEventListener("change", () => {
  setKey(ui.apiKey.value.trim());
  loadModels(); // the stream, if running, uses the new key when it next connects
});
ui.task.addEventListener("change", () => {
  selectDefaultModel(ui.task.value);
  settingsChanged();
});
ui.model.addEventListener("change", () => {
  const model = currentModel();
  if (model) ui.task.value = model.task;
  settingsChanged();
});
ui.conf.addEventListener("input", () => (ui.confValue.textContent = Number(ui.conf.value).toFixed(2)));
ui.conf.addEventListener("change", settingsChanged);
ui.tracking.addEventListener("change", settingsChanged);
ui.prompts.addEventListener("change", settingsChanged);
ui.source.addEventListener("change", () => {
  syncControls();
  restartSource();
});
ui.file.addEventListener("change", () => {
  if (ui.source.value === "file") restartSource();
});
ui.video.addEventListener("loadedmetadata", () => {
  if (ui.video.videoWidth && ui.video.videoHeight) {
    ui.stage.style.aspectRatio = `${ui.video.videoWidth} / ${ui.video.videoHeight}`;
  }
});
window.addEventListener("resize", () => {
  if (state.lastDrawn) drawResult(state.lastDrawn, false);
});

ui.confValue.textContent = Number(ui.conf.value).toFixed(2);
adoptKey();
syncControls();
loadModels();
