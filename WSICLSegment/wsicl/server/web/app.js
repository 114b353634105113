"use strict";
// WSICL in the browser. Volumes open in NiiVue; context sets of 2D boxes (drag on a slice)
// or points (click) are drawn on them; the `wsicl serve` this page came from segments the
// targets. The page talks only to that server's API, with the token typed once and kept
// for this tab (sessionStorage). Coordinates sent are RAS millimetres, as NiiVue reports
// them; a result mask comes back in the uploaded file's voxel order, which is the order
// NiiVue keeps an image's voxels in, so it overlays its volume voxel for voxel.

const API = "/v1";
const INTERACTIVE_DELAY_MS = 400;
const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem("wsicl-token") || "",
  info: null,
  volumes: [],      // {name, file, format, image, role, serverId, results: {set name: NVImage},
                    //  judged: {set name: {confidence, review}}}
  sets: [],         // {name, colour, kind, prompts: {volume name: [prompt]}}
  currentSet: -1,
  shown: null,
  run: null,        // {cancelled, jobId}
  history: [],      // per run: [{volume, set, previous}]
  interactiveTimer: null,
};

const nv = new niivue.Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: true,
                               dragAndDropEnabled: false, isColorbar: false,
                               crosshairWidth: 0.2, crosshairColor: [0.3, 0.8, 1, 0.7] });

// --- the server --------------------------------------------------------------------

class ServerError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(API + path, { ...options, headers: {
      ...(options.headers || {}), Authorization: `Bearer ${state.token}` } });
  } catch (error) {
    throw new ServerError(error instanceof TypeError && /header/i.test(error.message)
      ? "The token holds characters a browser cannot send; check it."
      : "The server cannot be reached; is wsicl serve still running?");
  }
  if (response.status === 401) {
    throw new ServerError("The server refused the token; check it and connect again.");
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      detail = body.detail || body.error || detail;
    } catch (ignored) { /* not JSON */ }
    throw new ServerError(detail, response.status);
  }
  return response;
}

async function connect() {
  showError("tokenError", "");
  state.token = $("tokenInput").value.trim() || state.token;
  try {
    state.info = await (await api("/info")).json();
  } catch (error) {
    sessionStorage.removeItem("wsicl-token");
    $("workspace").hidden = true;
    showError("tokenError", error.message);
    return;
  }
  sessionStorage.setItem("wsicl-token", state.token);
  $("tokenInput").value = "";
  $("tokenSection").hidden = true;
  $("workspace").hidden = false;
  $("serverInfo").textContent =
    `${state.info.version} on ${state.info.device} (${state.info.precision})`;
  render();
}

function modelFor(kind) {
  const models = Object.entries(state.info.models);
  const match = models.find(([, model]) => (model.prompt_kinds || []).includes(kind));
  if (!match) {
    throw new ServerError(`No model on this server reads ${kind} prompts ` +
                          `(it has ${models.map(([name]) => name).join(", ")}).`);
  }
  return match[0];
}

const UPLOAD_FORMATS = [[".nii.gz", "nii.gz"], [".nii", "nii"], [".nrrd", "nrrd"],
                        [".mha", "mha"]];

async function upload(volume) {
  if (!volume.serverId) {
    const answer = await api(`/volumes?format=${volume.format}`, {
      method: "POST", body: volume.file,
      headers: { "Content-Type": "application/octet-stream" } });
    volume.serverId = (await answer.json()).id;
  }
  return volume.serverId;
}

// One job from ``makeRequest`` (which uploads what it names). The server forgets volumes
// unused for a while (or when its cache is full): then they are uploaded again, once.
async function submit(makeRequest, describe) {
  try {
    return await runJob(await makeRequest(), describe);
  } catch (error) {
    if (!(error.status === 404 && /unknown volume id/.test(error.message))) throw error;
    state.volumes.forEach((volume) => { volume.serverId = null; });
    return runJob(await makeRequest(), describe);
  }
}

// One job: submitted, followed until it ends, its mask fetched and inflated, with the
// server's confidence in it (0-1, or null) and whether to review it.
async function runJob(request, describe) {
  let job = await (await api("/jobs", { method: "POST",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(request) })).json();
  state.run.jobId = job.id;
  while (!["done", "failed", "cancelled"].includes(job.state)) {
    setProgress(job.progress, `${describe}: ${job.message || job.state}`);
    const query = `wait=10&seen_state=${job.state}&seen_progress=${job.progress}`;
    job = await (await api(`/jobs/${job.id}?${query}`)).json();
  }
  if (job.state === "cancelled") return null;
  if (job.state === "failed") throw new ServerError(job.error || "the job failed");
  const answer = await api(`/jobs/${job.id}/mask`);
  const size = answer.headers.get("X-WSICL-Size").split(",").map(Number);
  const inflated = answer.body.pipeThrough(new DecompressionStream("deflate"));
  return { size, voxels: new Uint8Array(await new Response(inflated).arrayBuffer()),
           confidence: typeof job.confidence === "number" ? job.confidence : null,
           review: job.review === true };
}

// --- volumes -----------------------------------------------------------------------

async function openFiles(files) {
  showError("volumeError", "");
  for (const file of files) {
    const format = UPLOAD_FORMATS.find(([suffix]) => file.name.toLowerCase().endsWith(suffix));
    if (!format) {
      showError("volumeError", `${file.name}: not a NIfTI, NRRD or MHA file.`);
      continue;
    }
    if (state.volumes.some((v) => v.name === file.name)) {
      showError("volumeError", `${file.name} is open already.`);
      continue;
    }
    try {
      const image = await niivue.NVImage.loadFromFile({ file, name: file.name });
      const role = state.volumes.length === 0 ? "context" : "target";
      state.volumes.push({ name: file.name, file, format: format[1], image, role,
                           serverId: null, results: {}, judged: {} });
    } catch (error) {
      showError("volumeError", `${file.name}: cannot be read (${error.message}).`);
    }
  }
  if (!state.shown && state.volumes.length) await show(state.volumes[0]);
  render();
}

async function show(volume) {
  state.shown = volume;
  while (nv.volumes.length) nv.removeVolume(nv.volumes[0]);
  nv.addVolume(volume.image);
  for (const set of state.sets) {
    const result = volume.results[set.name];
    if (result) nv.addVolume(result);
  }
  applyOpacity();
  drawPrompts();
  $("shownName").textContent = `${volume.name} (${volume.role})`;
  render();
}

// --- context sets and prompts ------------------------------------------------------

function currentSet() {
  return state.sets[state.currentSet] || null;
}

function newSet(name, colour, kind) {
  name = name.trim();
  if (!name) throw new ServerError("Give the structure a name.");
  if (state.sets.some((s) => s.name === name)) {
    throw new ServerError(`There is a set named ${name} already.`);
  }
  state.sets.push({ name, colour, kind, prompts: {} });
  state.currentSet = state.sets.length - 1;
  registerColour(state.sets[state.currentSet]);
  return state.sets[state.currentSet];
}

function registerColour(set) {
  const [r, g, b] = rgb(set.colour);
  nv.addColormap(colourmapName(set), { R: [0, r], G: [0, g], B: [0, b], A: [0, 255],
                                       I: [0, 255] });
}

function colourmapName(set) {
  return `wsicl-${state.sets.indexOf(set)}`;
}

function rgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

function addPrompt(prompt) {
  const set = currentSet();
  const volume = state.shown;
  if (!set || !volume) {
    showError("setError", "Create a context set and open a volume first.");
    return;
  }
  showError("setError", "");
  (set.prompts[volume.name] = set.prompts[volume.name] || []).push(prompt);
  promptsChanged();
}

function removePrompt(set, volumeName, index) {
  set.prompts[volumeName].splice(index, 1);
  promptsChanged();
}

function promptsChanged() {
  drawPrompts();
  render();
  if ($("interactiveBox").checked) scheduleInteractive();
}

// The shown volume's prompts in NiiVue's drawing layer: box outlines and small squares for
// points, in their set's colour.
function drawPrompts() {
  if (!state.shown || !nv.back) return;
  nv.createEmptyDrawing();
  const lut = { R: [0], G: [0], B: [0], A: [0], I: [0] };
  state.sets.forEach((set, index) => {
    const [r, g, b] = rgb(set.colour);
    lut.R.push(r); lut.G.push(g); lut.B.push(b); lut.A.push(255); lut.I.push(index + 1);
  });
  if (state.sets.length) nv.setDrawColormap(lut);
  const dims = nv.back.dimsRAS;
  const bitmap = nv.drawBitmap;
  const put = (x, y, z, pen) => {
    if (x >= 0 && y >= 0 && z >= 0 && x < dims[1] && y < dims[2] && z < dims[3]) {
      bitmap[x + y * dims[1] + z * dims[1] * dims[2]] = pen;
    }
  };
  state.sets.forEach((set, index) => {
    for (const prompt of set.prompts[state.shown.name] || []) {
      if (prompt.kind === "box") {
        const low = toVoxel(prompt.min);
        const high = toVoxel(prompt.max);
        const lo = low.map((v, a) => Math.min(v, high[a]));
        const hi = low.map((v, a) => Math.max(v, high[a]));
        const spread = [0, 1, 2].filter((a) => hi[a] > lo[a]);   // 2 for a 2D box
        const from = lo.map((v) => Math.max(v, 0));         // only the voxels of the volume
        const to = hi.map((v, a) => Math.min(v, dims[a + 1] - 1));
        for (let x = from[0]; x <= to[0]; x++) {
          for (let y = from[1]; y <= to[1]; y++) {
            for (let z = from[2]; z <= to[2]; z++) {
              const at = [x, y, z];
              const edges = spread.filter((a) => at[a] === lo[a] || at[a] === hi[a]);
              if (edges.length >= spread.length - 1) put(x, y, z, index + 1);  // outline
            }
          }
        }
      } else {
        const [x, y, z] = toVoxel(prompt.position);
        for (let dx = -1; dx <= 1; dx++) {
          for (let dy = -1; dy <= 1; dy++) {
            for (let dz = -1; dz <= 1; dz++) put(x + dx, y + dy, z + dz, index + 1);
          }
        }
      }
    }
  });
  nv.refreshDrawing(true);
}

// Moves the crosshair (and so the slices shown) to a prompt's centre.
function goTo(prompt) {
  const mm = prompt.kind === "box"
    ? prompt.min.map((v, a) => (v + prompt.max[a]) / 2) : prompt.position;
  nv.scene.crosshairPos = nv.mm2frac(mm);
  nv.drawScene();
}

function toVoxel(mm) {
  return Array.from(nv.frac2vox(nv.mm2frac(mm))).map(Math.round);
}

function exportSet(set) {
  const context = state.volumes
    .filter((v) => v.role === "context" && (set.prompts[v.name] || []).length)
    .map((v) => {
      const prompts = set.prompts[v.name];
      const entry = { image: v.name };
      if (set.kind === "box") {
        entry.boxes = prompts.map((p) => ({ min: p.min, max: p.max }));
      } else {
        entry.points = prompts.map((p) => p.position);
      }
      return entry;
    });
  return { name: set.name, colour: set.colour, coordinates: "RAS", context };
}

// A context-set file as the command line reads it (coordinates "voxel": the image file's
// indices (i, j, k), inclusive; "LPS" or "RAS": millimetres; absent: voxel) or as this page
// exports it, checked field by field; its prompts become this page's RAS prompts on the
// open volumes of the same file names. One sentence says what is wrong, and nothing is
// added then.
function importSet(document) {
  const where = (index, field) => `context[${index}]${field ? "." + field : ""}`;
  const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
  if (!isObject(document) || !Array.isArray(document.context) || !document.context.length) {
    throw new ServerError("Not a context-set file: it needs a \"context\" list of images " +
                          "with boxes or points.");
  }
  const space = document.coordinates === undefined ? "voxel" : document.coordinates;
  if (!["voxel", "LPS", "RAS"].includes(space)) {
    throw new ServerError(`"coordinates" must be "voxel", "LPS" or "RAS", not ` +
                          `${JSON.stringify(space).slice(0, 40)}.`);
  }
  if (document.name !== undefined && typeof document.name !== "string") {
    throw new ServerError("\"name\" must be text.");
  }
  const colour = document.colour === undefined ? "#e64d33" : document.colour;
  if (typeof colour !== "string" || !/^#[0-9a-fA-F]{6}$/.test(colour)) {
    throw new ServerError("\"colour\" must be a colour as #rrggbb.");
  }
  const triple = (value, field) => {
    if (!Array.isArray(value) || value.length !== 3 ||
        !value.every((v) => typeof v === "number" && Number.isFinite(v))) {
      throw new ServerError(`${field} must be three finite numbers.`);
    }
    return value;
  };
  const entries = document.context.map((entry, index) => {
    if (!isObject(entry) || typeof entry.image !== "string" || !entry.image) {
      throw new ServerError(`${where(index)} must name its "image" as text.`);
    }
    if (entry.markups !== undefined || entry.mask !== undefined) {
      throw new ServerError(`${where(index)} (${entry.image}): markups files and masks ` +
                            "cannot be imported here; give its boxes or points.");
    }
    for (const key of ["boxes", "points"]) {
      if (entry[key] !== undefined && !Array.isArray(entry[key])) {
        throw new ServerError(`${where(index, key)} must be a list.`);
      }
    }
    const boxes = (entry.boxes || []).map((box, n) => {
      if (!isObject(box)) throw new ServerError(`${where(index, `boxes[${n}]`)} must be ` +
                                                "{\"min\": [x, y, z], \"max\": [x, y, z]}.");
      return { min: triple(box.min, where(index, `boxes[${n}].min`)),
               max: triple(box.max, where(index, `boxes[${n}].max`)) };
    });
    const points = (entry.points || []).map((p, n) => triple(p, where(index, `points[${n}]`)));
    if (!boxes.length && !points.length) {
      throw new ServerError(`${where(index)} (${entry.image}) has no boxes or points.`);
    }
    return { image: entry.image.split(/[\\/]/).pop(), boxes, points };
  });
  const kind = entries.some((e) => e.points.length) ? "point" : "box";
  if (entries.some((e) => (kind === "point" ? e.boxes : e.points).length)) {
    throw new ServerError("A set holds boxes or points, not both.");
  }
  const volumes = entries.map((e) => state.volumes.find((v) => v.name === e.image));
  const missing = entries.filter((e, i) => !volumes[i]).map((e) => e.image);
  if (missing.length) {
    throw new ServerError(`Open ${[...new Set(missing)].join(", ")} first: the set's ` +
                          "prompts lie on them.");
  }
  const set = newSet(String(document.name || "imported"), colour, kind);
  entries.forEach((entry, index) => {
    const volume = volumes[index];
    volume.role = "context";
    const toRas = (position) => rasOf(volume, position, space);
    set.prompts[volume.name] = (set.prompts[volume.name] || []).concat(kind === "box"
      ? entry.boxes.map((b) => rasBox(volume, b, space))
      : entry.points.map((p) => ({ kind: "point", position: toRas(p) })));
  });
}

// A position of ``volume`` in ``space`` as RAS millimetres: voxel indices (i, j, k) in the
// file's voxel order through the image's affine; LPS by flipping x and y.
function rasOf(volume, position, space) {
  if (space === "RAS") return position.slice();
  if (space === "LPS") return [-position[0], -position[1], position[2]];
  const a = volume.image.hdr.affine;
  return [0, 1, 2].map((r) => a[r][0] * position[0] + a[r][1] * position[1] +
                              a[r][2] * position[2] + a[r][3]);
}

// A box in ``space`` as the RAS box around it. Voxel boxes cover whole voxels (each face
// 0.49 voxel beyond the inclusive indices) except along an axis where min = max (a 2D box
// stays on its slice); swapped corners are put the right way round, as the command line
// does.
function rasBox(volume, box, space) {
  const low = box.min.map((v, a) => Math.min(v, box.max[a]));
  const high = box.min.map((v, a) => Math.max(v, box.max[a]));
  const margin = low.map((v, a) => (space === "voxel" && high[a] > v ? 0.49 : 0));
  const corners = [];
  for (const x of [low[0] - margin[0], high[0] + margin[0]]) {
    for (const y of [low[1] - margin[1], high[1] + margin[1]]) {
      for (const z of [low[2] - margin[2], high[2] + margin[2]]) {
        corners.push(rasOf(volume, [x, y, z], space));
      }
    }
  }
  return { kind: "box",
           min: [0, 1, 2].map((a) => Math.min(...corners.map((c) => c[a]))),
           max: [0, 1, 2].map((a) => Math.max(...corners.map((c) => c[a]))) };
}

// --- segmenting --------------------------------------------------------------------

function contextEntries(set) {
  return state.volumes.filter((v) => v.role === "context" &&
                              (set.prompts[v.name] || []).length);
}

function jobPrompts(prompts) {
  return {
    boxes: prompts.filter((p) => p.kind === "box")
      .map((p) => ({ min: p.min, max: p.max, space: "RAS" })),
    points: prompts.filter((p) => p.kind === "point")
      .map((p) => ({ position: p.position, space: "RAS" })),
  };
}

async function segment(targets) {
  showError("segmentError", "");
  const sets = state.sets.filter((s) => contextEntries(s).length);
  if (!sets.length) {
    showError("segmentError", "Draw prompts of a set on a volume marked as context first.");
    return;
  }
  if (!targets.length) {
    showError("segmentError", "Mark a volume as target (or show one) first.");
    return;
  }
  await runWork(async () => {
    const changes = [];
    const jobs = targets.flatMap((t) => sets.map((s) => [t, s]));
    for (const [index, [target, set]] of jobs.entries()) {
      if (state.run.cancelled) return null;
      const model = modelFor(set.kind);
      const mask = await submit(async () => {
        const entries = [];
        for (const volume of contextEntries(set)) {
          entries.push({ image: await upload(volume), name: volume.name,
                         ...jobPrompts(set.prompts[volume.name]) });
        }
        return { model, mode: "context", target: await upload(target), name: target.name,
                 context: { name: set.name, entries } };
      }, `${set.name} in ${target.name} (${index + 1}/${jobs.length})`);
      if (mask === null) return null;
      changes.push({ volume: target, set, mask });
    }
    return changes;
  });
}

async function runInteractive() {
  const set = currentSet();
  const volume = state.shown;
  const prompts = set && volume ? set.prompts[volume.name] || [] : [];
  if (!prompts.length) return;
  if (state.run) {                          // one lane: after the run in flight
    scheduleInteractive();
    return;
  }
  await runWork(async () => {
    const model = modelFor(set.kind);
    const mask = await submit(async () => ({
      model, mode: "interactive", target: await upload(volume), name: volume.name,
      ...jobPrompts(prompts) }), `${set.name} in ${volume.name} (interactive)`);
    return mask === null ? null : [{ volume, set, mask }];
  });
}

function scheduleInteractive() {
  clearTimeout(state.interactiveTimer);
  state.interactiveTimer = setTimeout(runInteractive, INTERACTIVE_DELAY_MS);
}

// Runs ``work`` (resolving to the results of a run, or null when cancelled); the results
// reach the volumes only when all of them are in, so a cancelled or failed run changes
// nothing.
async function runWork(work) {
  state.run = { cancelled: false, jobId: null };
  render();
  setProgress(0, "Uploading...");
  try {
    const changes = await work();
    if (changes === null || state.run.cancelled) {
      setProgress(0, "Cancelled; nothing changed.");
      return;
    }
    state.history.push(changes.map((c) => applyResult(c)));
    const flagged = changes.filter((c) => c.mask.review).length;
    setProgress(1, `Done: ${changes.length} result(s)` +
                (flagged ? `; ${flagged} to review (marked ⚑).` : "."));
    if (state.shown) await show(state.shown);
  } catch (error) {
    setProgress(0, "");
    showError("segmentError", error.message);
  } finally {
    state.run = null;
    render();
  }
}

function applyResult({ volume, set, mask }) {
  const dims = volume.image.hdr.dims.slice(1, 4);
  if (mask.size.join(",") !== dims.join(",") || mask.voxels.length !== dims[0] * dims[1] *
      dims[2]) {
    throw new ServerError(`The server's mask for ${volume.name} has size ${mask.size}; ` +
                          `the volume has ${dims}.`);
  }
  const overlay = volume.image.clone();
  overlay.zeroImage();
  overlay.name = `${volume.name} ${set.name}`;
  mask.voxels.forEach((value, index) => { overlay.img[index] = value; });
  overlay.cal_min = 0.5;
  overlay.cal_max = 1;
  overlay.colormap = colourmapName(set);
  const previous = volume.results[set.name] || null;
  const previousJudged = volume.judged[set.name] || null;
  volume.results[set.name] = overlay;
  volume.judged[set.name] = { confidence: mask.confidence, review: mask.review };
  return { volume, set, previous, previousJudged };
}

function undo() {
  const run = state.history.pop();
  if (!run) {
    setProgress(0, "Nothing to undo.");
    return;
  }
  for (const { volume, set, previous, previousJudged } of run.reverse()) {
    if (previous) volume.results[set.name] = previous;
    else delete volume.results[set.name];
    if (previousJudged) volume.judged[set.name] = previousJudged;
    else delete volume.judged[set.name];
  }
  setProgress(0, "Last run undone.");
  if (state.shown) show(state.shown);
}

async function cancel() {
  if (!state.run) return;
  state.run.cancelled = true;
  setProgress(0, "Cancelling...");
  if (state.run.jobId) {
    try {
      await api(`/jobs/${state.run.jobId}`, { method: "DELETE" });
    } catch (error) {
      showError("segmentError", error.message);
    }
  }
}

// Saves the shown volume's result: ``.nii.gz`` the current set's mask; ``.seg.nrrd`` every
// set's result as a 3D Slicer segmentation (segment n = label n + 1 with the set's name and
// colour; where results overlap, the later set wins).
async function download() {
  const set = currentSet();
  const volume = state.shown;
  const format = $("downloadFormat").value;
  const stem = volume ? volume.name.replace(/\.(nii\.gz|nii|nrrd|mha)$/i, "") : "";
  let name;
  let bytes;
  if (format === "seg.nrrd") {
    const sets = volume ? state.sets.filter((s) => volume.results[s.name]) : [];
    if (!sets.length) {
      showError("segmentError", "Show a volume with a result first.");
      return;
    }
    name = `${stem}.seg.nrrd`;
    bytes = await segNrrd(volume, sets);
  } else {
    const result = set && volume ? volume.results[set.name] : null;
    if (!result) {
      showError("segmentError", "Show a volume with a result of the current set first.");
      return;
    }
    name = `${stem}_${set.name}.nii.gz`;
    bytes = await result.saveToUint8Array(name);
  }
  showError("segmentError", "");
  save(new Blob([bytes], { type: "application/octet-stream" }), name);
}

// Hands ``blob`` to the browser as a download named ``name``.
function save(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// A 3D Slicer segmentation file (NRRD, gzip, LPS) of ``sets``' results on ``volume``: the
// grid comes from the volume's voxel-to-RAS affine, turned into LPS.
async function segNrrd(volume, sets) {
  const dims = volume.image.hdr.dims.slice(1, 4);
  const labels = new Uint8Array(dims[0] * dims[1] * dims[2]);
  sets.forEach((set, index) => {
    volume.results[set.name].img.forEach((value, voxel) => {
      if (value > 0.5) labels[voxel] = index + 1;
    });
  });
  const affine = volume.image.hdr.affine;
  const lps = (x, a) => (a < 2 ? -x : x);
  const vector = (values) => `(${values.map((v) => Number(v).toPrecision(17)).join(",")})`;
  const directions = [0, 1, 2].map((column) => vector(
    [0, 1, 2].map((row) => lps(affine[row][column], row))));
  const origin = vector([0, 1, 2].map((row) => lps(affine[row][3], row)));
  const fields = ["NRRD0004", "type: unsigned char", "dimension: 3",
    "space: left-posterior-superior", `sizes: ${dims.join(" ")}`,
    `space directions: ${directions.join(" ")}`, "kinds: domain domain domain",
    "endian: little", "encoding: gzip", `space origin: ${origin}`,
    "Segmentation_MasterRepresentation:=Binary labelmap",
    "Segmentation_ContainedRepresentationNames:=Binary labelmap|"];
  sets.forEach((set, index) => {
    const colour = rgb(set.colour).map((c) => (c / 255).toPrecision(4)).join(" ");
    const name = set.name.replace(/[\u0000-\u001f\u007f]/g, " ");    // one header line
    fields.push(`Segment${index}_ID:=Segment_${index + 1}`, `Segment${index}_Name:=${name}`,
                `Segment${index}_Color:=${colour}`, `Segment${index}_LabelValue:=${index + 1}`,
                `Segment${index}_Layer:=0`,
                `Segment${index}_Extent:=${dims.map((d) => `0 ${d - 1}`).join(" ")}`);
  });
  const header = new TextEncoder().encode(fields.join("\n") + "\n\n");
  const packed = new Blob([labels]).stream().pipeThrough(new CompressionStream("gzip"));
  const data = new Uint8Array(await new Response(packed).arrayBuffer());
  const file = new Uint8Array(header.length + data.length);
  file.set(header);
  file.set(data, header.length);
  return file;
}

// --- the page ----------------------------------------------------------------------

function showError(id, message) {
  $(id).textContent = message;
}

function setProgress(fraction, message) {
  $("progress").value = Math.round(100 * fraction);
  $("status").textContent = message;
}

function applyOpacity() {
  const opacity = Number($("opacity").value) / 100;
  nv.volumes.slice(1).forEach((volume) => { volume.opacity = opacity; });
  if (nv.volumes.length) nv.updateGLVolume();
}

function item(list, label, current, onPick, extras = []) {
  const li = document.createElement("li");
  if (current) li.className = "current";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = label;
  name.addEventListener("click", onPick);
  li.append(name, ...extras);
  list.append(li);
  return li;
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

// The volume's results' confidence, lowest first, and ⚑ where one is to review.
function judgedMarks(volume) {
  const judged = Object.values(volume.judged).filter((j) => j.confidence !== null);
  if (!judged.length) return "";
  const lowest = Math.min(...judged.map((j) => j.confidence));
  return ` ${lowest.toFixed(2)}` + (judged.some((j) => j.review) ? " ⚑ to review" : "");
}

function render() {
  const volumes = $("volumeList");
  volumes.replaceChildren();
  for (const volume of state.volumes) {
    const role = document.createElement("select");
    role.setAttribute("aria-label", `role of ${volume.name}`);
    for (const value of ["context", "target"]) role.add(new Option(value, value));
    role.value = volume.role;
    role.addEventListener("change", () => { volume.role = role.value; show(volume); });
    const marks = (Object.keys(volume.results).length ? " ●" : "") + judgedMarks(volume);
    item(volumes, volume.name + marks, volume === state.shown, () => show(volume), [role]);
  }
  const sets = $("setList");
  sets.replaceChildren();
  state.sets.forEach((set, index) => {
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = set.colour;
    const li = item(sets, `${set.name} (${set.kind})`, index === state.currentSet, () => {
      state.currentSet = index;
      render();
    }, [button("Delete", () => {
      state.sets.splice(index, 1);
      state.currentSet = Math.min(state.currentSet, state.sets.length - 1);
      state.sets.forEach(registerColour);
      promptsChanged();
    })]);
    li.prepend(swatch);
  });
  const prompts = $("promptList");
  prompts.replaceChildren();
  if (state.shown) {
    for (const set of state.sets) {
      (set.prompts[state.shown.name] || []).forEach((prompt, index) => {
        const where = prompt.kind === "box"
          ? `box ${fmt(prompt.min)} to ${fmt(prompt.max)}` : `point ${fmt(prompt.position)}`;
        item(prompts, `${set.name}: ${where}`, false, () => goTo(prompt),
             [button("Delete", () => removePrompt(set, state.shown.name, index))]);
      });
    }
  }
  const set = currentSet();
  $("promptHelp").textContent = !set ? "Create a context set to draw prompts."
    : set.kind === "box" ? `Drag on a slice to draw a 2D box of ${set.name}.`
    : `Click on a slice to place a point of ${set.name}.`;
  const busy = Boolean(state.run);
  $("segmentButton").disabled = busy;
  $("segmentAllButton").disabled = busy;
  $("cancelButton").disabled = !busy;
  $("undoButton").disabled = busy;
  const boxes = Boolean(set && set.kind === "box");   // a left drag draws a box
  nv.opts.dragModePrimary = boxes ? niivue.DRAG_MODE.callbackOnly : niivue.DRAG_MODE.crosshair;
  nv.opts.dragMode = boxes ? niivue.DRAG_MODE.callbackOnly : niivue.DRAG_MODE.contrast;
}

function fmt(mm) {
  return `(${mm.map((v) => v.toFixed(1)).join(", ")})`;
}

async function main() {
  await nv.attachToCanvas($("viewer"));
  nv.setSliceType(nv.sliceTypeMultiplanar);
  nv.opts.multiplanarShowRender = niivue.SHOW_RENDER.ALWAYS;
  nv.onDragRelease = (drag) => {
    if (drag.axCorSag > 2 || !currentSet() || currentSet().kind !== "box") return;
    const start = Array.from(drag.mmStart).slice(0, 3);
    const end = Array.from(drag.mmEnd).slice(0, 3);
    addPrompt({ kind: "box", min: start.map((v, a) => Math.min(v, end[a])),
                max: start.map((v, a) => Math.max(v, end[a])) });
  };
  let pressed = null;
  $("viewer").addEventListener("pointerdown", (e) => { pressed = [e.clientX, e.clientY]; });
  $("viewer").addEventListener("pointerup", (e) => {
    const set = currentSet();
    const click = pressed && Math.hypot(e.clientX - pressed[0], e.clientY - pressed[1]) < 3;
    if (click && e.button === 0 && set && set.kind === "point" && state.shown) {
      setTimeout(() => addPrompt({ kind: "point", position: Array.from(
        nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3) }), 0);
    }
  });
  $("tokenButton").addEventListener("click", connect);
  $("tokenInput").addEventListener("keydown", (e) => { if (e.key === "Enter") connect(); });
  $("fileInput").addEventListener("change", (e) => openFiles(Array.from(e.target.files)));
  const drop = $("dropZone");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    openFiles(Array.from(e.dataTransfer.files));
  });
  $("newSetButton").addEventListener("click", () => {
    try {
      newSet($("setName").value, $("setColour").value, $("setKind").value);
      showError("setError", "");
      promptsChanged();
    } catch (error) {
      showError("setError", error.message);
    }
  });
  $("exportButton").addEventListener("click", () => {
    const set = currentSet();
    if (!set) return showError("setError", "Create a context set first.");
    save(new Blob([JSON.stringify(exportSet(set), null, 1)], { type: "application/json" }),
         `${set.name}.json`);
  });
  $("importInput").addEventListener("change", async (e) => {
    try {
      importSet(JSON.parse(await e.target.files[0].text()));
      showError("setError", "");
    } catch (error) {
      showError("setError", error instanceof SyntaxError
        ? `${e.target.files[0].name}: not JSON (${error.message}).` : error.message);
    }
    e.target.value = "";
    promptsChanged();
  });
  $("segmentButton").addEventListener("click", () => segment(state.shown ? [state.shown] : []));
  $("segmentAllButton").addEventListener("click", () => segment(
    state.volumes.filter((v) => v.role === "target")));
  $("cancelButton").addEventListener("click", cancel);
  $("undoButton").addEventListener("click", undo);
  $("downloadButton").addEventListener("click", download);
  $("opacity").addEventListener("input", applyOpacity);
  $("interactiveBox").addEventListener("change", () => {
    if ($("interactiveBox").checked) scheduleInteractive();
  });
  $("viewSelect").addEventListener("change", () => {
    nv.setSliceType($("viewSelect").value === "axial" ? nv.sliceTypeAxial
      : nv.sliceTypeMultiplanar);
  });
  window.wsicl = { state, nv, exportSet, currentSet, segNrrd };   // for scripts and tests
  if (state.token) await connect();
  render();
}

main();
