// The minutereel studio page: plain JS over the server's OpenAI-shaped Videos API, no build step.
// A browser sends no Authorization header when it loads <video src> or an EventSource, so every request
// goes through fetch with the token, and media arrive as blobs.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "minutereel.token";
const JOBS_REFRESH_MS = 4000;
const ACTIVE = new Set(["queued", "in_progress"]);

const studio = { token: localStorage.getItem(TOKEN_KEY) || "", current: null, watch: null, planBusy: false,
                 planAgain: false, stripDone: -1, objectUrls: {}, preview: null, previewPieces: 0 };

class APIError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (studio.token) headers.Authorization = `Bearer ${studio.token}`;
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not the OpenAI error shape */ }
    throw new APIError(response.status, message);
  }
  return response;
}

const getJSON = async (path) => (await api(path)).json();

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.textContent = text;
  return node;
}

// -- composing -----------------------------------------------------------------------------------

function addShot(at = "", prompt = "") {
  const shot = $("shot-template").content.firstElementChild.cloneNode(true);
  shot.querySelector(".at").value = at;
  shot.querySelector(".shot-prompt").value = prompt;
  shot.querySelector(".remove").onclick = () => shot.remove();
  $("shots").append(shot);
}

function storyboard() {
  return [...document.querySelectorAll("#shots .shot")]
    .map((shot) => ({ at_s: Number(shot.querySelector(".at").value), prompt: shot.querySelector(".shot-prompt").value.trim() }))
    .filter((entry) => entry.prompt)
    .sort((a, b) => a.at_s - b.at_s);
}

function createForm() {
  const form = new FormData();
  const prompt = $("prompt").value.trim();
  if (prompt) form.append("prompt", prompt);
  const shots = storyboard();
  if (shots.length) form.append("storyboard", JSON.stringify(shots));
  form.append("model", $("model").value);
  form.append("seconds", $("seconds").value);
  form.append("seed", $("seed").value || "0");
  if ($("mode").value) form.append("mode", $("mode").value);
  if ($("size").value.trim()) form.append("size", $("size").value.trim());
  if ($("segment-frames").value) form.append("segment_frames", $("segment-frames").value);
  if ($("overlap-frames").value) form.append("overlap_frames", $("overlap-frames").value);
  if ($("image").files[0]) form.append("input_reference", $("image").files[0]);
  return form;
}

async function submit(event) {
  event.preventDefault();
  $("form-error").textContent = "";
  $("submit").disabled = true;
  try {
    const video = await (await api("/v1/videos", { method: "POST", body: createForm() })).json();
    watch(video.id);
    refreshJobs();
  } catch (err) {
    $("form-error").textContent = err.message;
  } finally {
    $("submit").disabled = false;
  }
}

// -- watching one video --------------------------------------------------------------------------

function showVideo(video) {
  $("job-id").textContent = video.id;
  $("status").textContent = video.error?.code === "cancelled" ? "cancelled" : video.status;
  $("status").className = `badge ${video.status}`;
  $("progress").value = video.progress;
  const step = video.render.progress.step;
  $("progress-text").textContent = `${video.progress}%` + (step && ACTIVE.has(video.status)
    ? ` · step ${step}/${video.render.progress.steps}` : "");
  $("job-error").textContent = video.error && video.error.code !== "cancelled" ? video.error.message : "";
}

async function readEvents(id, signal, onVideo) {
  // Server-Sent Events through fetch (EventSource cannot send the token): one `data:` line per Video.
  const response = await api(`/v1/videos/${id}/events`, { signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const message = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of message.split("\n")) {
        if (line.startsWith("data: ")) onVideo(JSON.parse(line.slice(6)));
      }
    }
  }
}

async function watch(id) {
  if (studio.watch) studio.watch.abort();
  const controller = new AbortController();
  studio.watch = controller;
  studio.current = id;
  studio.stripDone = -1;
  for (const kind of ["video", "strip"]) {
    $(kind).removeAttribute("src");
    if (studio.objectUrls[kind]) URL.revokeObjectURL(studio.objectUrls[kind]);
  }
  $("video").load();
  stopPreview();
  $("timeline").replaceChildren(element("div", { class: "empty" }, "planning…"));
  let last = null;
  try {
    await readEvents(id, controller.signal, (video) => {
      last = video;
      showVideo(video);
      refreshPlan(id);
      const { keyframes_done: keyframes, segments_done: segments, frames_written: written } = video.render.progress;
      if (written > 0) startPreview(id);  // the first piece exists
      if (keyframes > 0 && keyframes + segments !== studio.stripDone) {  // a new still may start the strip
        studio.stripDone = keyframes + segments;
        showMedia(id, "strip", "spritesheet");
      }
    });
  } catch (err) {
    if (err.name !== "AbortError") $("job-error").textContent = err.message;
    return;
  }
  if (studio.current !== id || !last) return;
  refreshPlan(id);
  refreshJobs();
  if (last.status === "completed") {
    showMedia(id, "strip", "spritesheet");
    showMedia(id, "video", "video");
  }
}

async function showMedia(id, target, variant) {
  try {
    const blob = await (await api(`/v1/videos/${id}/content?variant=${variant}`)).blob();
    if (studio.current !== id) return;
    if (studio.objectUrls[target]) URL.revokeObjectURL(studio.objectUrls[target]);
    studio.objectUrls[target] = URL.createObjectURL(blob);
    $(target).src = studio.objectUrls[target];
    if (target === "video") $("video").play().catch(() => { /* autoplay refused: the controls remain */ });
  } catch (err) {
    if (err.status !== 409) $("job-error").textContent = err.message;
  }
}

// -- the live preview ----------------------------------------------------------------------------

function stopPreview() {
  if (studio.preview) studio.preview.destroy();
  studio.preview = null;
  studio.previewPieces = 0;
  $("preview-video").removeAttribute("src");
  $("preview-state").textContent = "waits for the first piece";
}

function startPreview(id) {
  // The server's preview.m3u8 is an HLS event playlist of the pieces joined so far; hls.js plays it from the
  // start and follows it as it grows, until #EXT-X-ENDLIST. Its requests carry the token like every other.
  if (studio.preview || !window.Hls || !Hls.isSupported()) return;
  const hls = new Hls({
    startPosition: 0,
    xhrSetup: (xhr) => { if (studio.token) xhr.setRequestHeader("Authorization", `Bearer ${studio.token}`); },
  });
  hls.on(Hls.Events.FRAG_LOADED, () => {
    studio.previewPieces += 1;
    $("preview-state").textContent = `${studio.previewPieces} piece(s)`;
  });
  hls.on(Hls.Events.ERROR, (_event, data) => {
    if (data.fatal) $("preview-state").textContent = `stopped: ${data.details}`;
  });
  hls.loadSource(`/v1/videos/${id}/preview.m3u8`);
  hls.attachMedia($("preview-video"));
  $("preview-video").play().catch(() => { /* autoplay refused: the controls remain */ });
  studio.preview = hls;
}

// -- the timeline --------------------------------------------------------------------------------

async function refreshPlan(id) {
  // One request at a time; an event that arrives meanwhile asks for one more afterwards.
  if (studio.planBusy) { studio.planAgain = true; return; }
  studio.planBusy = true;
  try {
    do {
      studio.planAgain = false;
      const plan = await getJSON(`/v1/videos/${id}/plan`).catch((err) => (err.status === 409 ? null : Promise.reject(err)));
      if (plan && studio.current === id) drawTimeline(plan);
    } while (studio.planAgain);
  } catch (err) {
    $("job-error").textContent = err.message;
  } finally {
    studio.planBusy = false;
  }
}

function tickSeconds(seconds) {
  for (const step of [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300]) if (seconds / step <= 12) return step;
  return 600;
}

function drawTimeline(plan) {
  const total = plan.total_frames;
  const at = (frame) => `${(100 * frame) / total}%`;
  const nodes = [];
  const seconds = total / plan.fps;
  const step = tickSeconds(seconds);
  for (let s = 0; s < seconds; s += step) {
    const tick = element("div", { class: "tick", style: `left:${at(s * plan.fps)}` });
    tick.append(element("span", {}, `${+s.toFixed(1)} s`));
    nodes.push(tick);
  }
  for (const k of plan.keyframes) {
    nodes.push(element("div", { class: `keyframe ${k.state}`, "data-state": k.state, style: `left:${at(k.frame)}`,
                                title: `keyframe ${k.index} at ${k.at_s} s (${k.source}): ${k.prompt} — ${k.state}` }));
  }
  for (const s of plan.segments) {
    const lane = s.index % 2;  // alternate lanes, so overlapping segments both show
    const bar = element("div", {
      class: `segment ${s.state}`, "data-state": s.state,
      style: `left:${at(s.start_frame)};width:${at(s.end_frame - s.start_frame)};top:${30 + lane * 25}px`,
      title: `segment ${s.index}, frames ${s.start_frame}–${s.end_frame}, wave ${s.wave}: ${s.prompt} — ${s.state}`,
    }, `S${s.index} · ${s.prompt}`);
    nodes.push(bar);
  }
  const track = element("div", { class: "track" });
  track.append(...nodes);
  $("timeline").replaceChildren(track);
  $("timeline").dataset.mode = plan.mode;
}

// -- the job list --------------------------------------------------------------------------------

function jobRow(video) {
  const row = element("tr", { "data-id": video.id, class: video.id === studio.current ? "current" : "" });
  const id = element("td");
  const open = element("code", { title: "show this video" }, video.id.slice(0, 8));
  open.onclick = () => watch(video.id);
  id.append(open);
  const status = video.error?.code === "cancelled" ? "cancelled" : video.status;
  row.append(id, element("td", { class: "prompt", title: video.prompt || "" }, video.prompt || ""),
             element("td", {}, video.seconds),
             element("td", { class: "status" }, ACTIVE.has(video.status) ? `${status} ${video.progress}%` : status));
  const actions = element("td");
  if (ACTIVE.has(video.status)) {
    const cancel = element("button", { type: "button", class: "quiet cancel" }, "cancel");
    cancel.onclick = async () => {
      cancel.disabled = true;
      try { await api(`/v1/videos/${video.id}/cancel`, { method: "POST" }); } catch (err) {
        $("jobs-error").textContent = err.message;
      }
      refreshJobs();
    };
    actions.append(cancel);
  }
  row.append(actions);
  return row;
}

async function refreshJobs() {
  try {
    const page = await getJSON("/v1/videos?limit=20");
    $("job-rows").replaceChildren(...page.data.map(jobRow));
    $("jobs-error").textContent = "";
  } catch (err) {
    $("jobs-error").textContent = err.message;
  }
}

async function loadModels() {
  try {
    const models = await getJSON("/v1/models");
    $("model").replaceChildren(...models.data.map((m) => element("option", { value: m.id }, m.id)));
  } catch (err) {
    $("form-error").textContent = err.message;
  }
}

function setToken() {
  studio.token = $("token").value.trim();
  localStorage.setItem(TOKEN_KEY, studio.token);
  loadModels();
  refreshJobs();
}

$("token").value = studio.token;
$("token").addEventListener("change", setToken);
$("create").addEventListener("submit", submit);
$("add-shot").onclick = () => addShot();
$("refresh").onclick = refreshJobs;
loadModels();
refreshJobs();
setInterval(refreshJobs, JOBS_REFRESH_MS);
