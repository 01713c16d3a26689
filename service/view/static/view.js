// The holostream viewer page: a WebSocket from the viewer process, canvases drawn from float32 slices.
// Messages: JSON text ("hello", "status") and binary "image" messages (see service/view/wire.py).
"use strict";

const $ = (id) => document.getElementById(id);

// Colour maps as a few anchor colours, interpolated to 256 entries (viridis anchors at 1/8 steps).
const ANCHORS = {
  gray: [[0, 0, 0], [255, 255, 255]],
  viridis: [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
            [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]],
};

function makeLut(name) {
  const anchors = ANCHORS[name] || ANCHORS.gray;
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (anchors.length - 1);
    const k = Math.min(Math.floor(t), anchors.length - 2);
    const f = t - k;
    for (let c = 0; c < 3; c++) lut[3 * i + c] = Math.round(anchors[k][c] * (1 - f) + anchors[k + 1][c] * f);
  }
  return lut;
}

// Everything the page knows; window.holostreamView lets tests and the console look at it.
const view = {
  connected: false, hello: null, retune: null, status: null, statusAt: 0, statusAge: 0,
  image: null, imageAt: 0, images: 0, override: null, lut: makeLut("viridis"),
};
window.holostreamView = view;

function unpack(buffer) {
  const n = new DataView(buffer).getUint32(0, true);
  const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
  let offset = 4 + n;
  const arrays = {};
  for (const entry of meta.arrays) {
    const [rows, cols] = entry.shape;
    arrays[entry.name] = { ...entry, rows, cols, data: new Float32Array(buffer, offset, rows * cols) };
    offset += 4 * rows * cols;
  }
  return { meta, arrays };
}

// The scale in force: the operator's, while it belongs to the scan shown, else the scan's own.
function activeScale() {
  if (!view.image) return null;
  const o = view.override;
  if (o && o.key === view.image.meta.scan_key) return [o.low, o.high];
  return view.image.meta.scale.slice(0, 2);
}

function drawSlice(canvas, slice, scale) {
  if (!slice) {
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    return;
  }
  canvas.width = slice.cols;
  canvas.height = slice.rows;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(slice.cols, slice.rows);
  const [low, high] = scale;
  const k = 255 / (high - low);
  const lut = view.lut, px = image.data, data = slice.data;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    const j = Number.isFinite(v) ? Math.max(0, Math.min(255, Math.round((v - low) * k))) : 0;
    px[4 * i] = lut[3 * j]; px[4 * i + 1] = lut[3 * j + 1]; px[4 * i + 2] = lut[3 * j + 2]; px[4 * i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

function drawColorbar(scale) {
  const canvas = $("colorbar");
  const ctx = canvas.getContext("2d");
  for (let y = 0; y < canvas.height; y++) {
    const j = Math.round(255 * (1 - y / (canvas.height - 1)));
    ctx.fillStyle = `rgb(${view.lut[3 * j]},${view.lut[3 * j + 1]},${view.lut[3 * j + 2]})`;
    ctx.fillRect(0, y, canvas.width, 1);
  }
  $("scale-high").textContent = fmt(scale[1]);
  $("scale-mid").textContent = fmt((scale[0] + scale[1]) / 2);
  $("scale-low").textContent = fmt(scale[0]);
}

function fmt(v, digits = 3) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-2) ? v.toExponential(digits - 1) : v.toPrecision(digits);
}

function fillTable(table, rows) {
  table.replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th"); th.textContent = k;
    const td = document.createElement("td"); td.textContent = typeof v === "string" ? v : fmt(v, 4);
    tr.append(th, td);
    return tr;
  }));
}

function render() {
  const image = view.image;
  if (!image) return;
  const scale = activeScale();
  const { meta, arrays } = image;
  for (const axis of ["z", "y", "x"]) {
    drawSlice($("cut-" + axis), arrays[axis], scale);
    const a = arrays[axis];
    $("caption-" + axis).textContent = `${axis} = ${a.index} (${a.rows}×${a.cols})`;
  }
  const chosen = arrays.chosen;
  drawSlice($("cut-chosen"), chosen || null, scale);
  $("caption-chosen").textContent = chosen ? `${chosen.axis} = ${chosen.index}` : "";
  drawColorbar(scale);
  if (document.activeElement !== $("scale-min") && document.activeElement !== $("scale-max")) {
    $("scale-min").value = Number(scale[0].toPrecision(4)); $("scale-max").value = Number(scale[1].toPrecision(4));
  }
  $("scale-note").textContent = view.override && view.override.key === meta.scan_key
    ? "Your scale, until the next scan."
    : meta.scale[2] ? "The scan's scale, fixed once half of its projections were in."
    : "The scan's scale follows each volume until half of its projections are in.";
  const h = meta.header;
  $("scan-id").textContent = h.scan_id;
  $("volume-seq").textContent = `${h.seq}${h.final ? " (final)" : ""}`;
  $("cor-px").textContent = fmt(h.cor_px, 4);
  $("cor-confidence").textContent = h.cor_confidence === undefined ? "–" : fmt(h.cor_confidence, 2);
  $("cor-source").textContent = h.cor_source || "–";
  const skip = new Set(["type", "dtype", "shape", "timestamp", "scan_id", "seq", "scan_seq"]);
  fillTable($("parameters"), [["shape", meta.shape.join(" × ")],
    ...Object.entries(h).filter(([k]) => !skip.has(k)).map(([k, v]) => [k, typeof v === "object" && v !== null ? JSON.stringify(v) : v])]);
  // the slice chooser follows the volume's extent along the chosen axis
  const slider = $("chosen-index"), axis = $("chosen-axis").value;
  slider.disabled = !axis || !meta.has_volume;
  $("chosen-axis").disabled = !meta.has_volume;
  if (axis) slider.max = meta.shape["zyx".indexOf(axis)] - 1;
  document.body.dataset.scanKey = meta.scan_key;
  document.body.dataset.seq = h.seq;
}

function renderStatus() {
  const s = view.status || {};
  const ingest = s.ingest || {};
  $("state").textContent = s.state || "–";
  // a final volume's numbers are the scan's last word; a status sent just before it lags behind
  const header = view.image?.meta.header;
  const final = header?.final && (!s.scan_id || s.scan_id === header.scan_id);
  const used = final ? header.n_projections_used : (s.n_projections_used ?? header?.n_projections_used);
  const expected = final ? header.n_projections_expected
    : (s.n_projections_expected ?? header?.n_projections_expected);
  $("projections").textContent = used === undefined || used === null ? "–" : `${used} / ${expected}`;
  $("frames-per-s").textContent = fmt(s.frames_per_s ?? 0, 3);
  fillTable($("frames"), [["received", s.frames_received ?? 0], ["rejected", s.frames_rejected ?? 0],
    ["dropped", s.frames_dropped ?? 0], ["ring fill", `${Math.round(100 * (s.ring_fill ?? 0))} %`],
    ["volumes published", s.volumes_published ?? 0], ["scans completed", s.scans_completed ?? 0],
    ["worker restarts", s.worker_restarts ?? 0], ["last error", s.last_error || "none"]]);
  const reasons = Object.entries(ingest.rejected_by_reason || {}).filter(([, n]) => n > 0);
  fillTable($("rejects"), reasons.length ? reasons : [["none", ""]]);
}

function tick() {
  const now = performance.now();
  if (view.image) $("volume-age").textContent = `${(view.image.meta.age_s + (now - view.imageAt) / 1000).toFixed(1)} s`;
  const statusAge = view.status ? view.statusAge + (now - view.statusAt) / 1000 : null;
  const stale = statusAge === null || statusAge > 5;
  $("connection").textContent = !view.connected ? "viewer unreachable"
    : stale ? "no status from the daemon" : "live";
  $("connection").className = view.connected && !stale ? "good" : "bad";
  $("footer").textContent = view.hello
    ? `holostream ${view.hello.holostream_version} · daemon ${view.hello.publish} · ${view.images} pictures received`
    + (statusAge === null ? "" : ` · status ${statusAge.toFixed(1)} s old`) : "–";
}

function requestSlice() {
  if (!view.socket || view.socket.readyState !== WebSocket.OPEN) return;
  const axis = $("chosen-axis").value || null;
  view.socket.send(JSON.stringify({ type: "slice", axis, index: Number($("chosen-index").value) }));
}

function connect() {
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  socket.binaryType = "arraybuffer";
  view.socket = socket;
  socket.onopen = () => { view.connected = true; requestSlice(); };
  socket.onclose = () => { view.connected = false; setTimeout(connect, 1000); };
  socket.onmessage = (event) => {
    if (typeof event.data === "string") {
      const message = JSON.parse(event.data);
      if (message.type === "hello") {
        view.hello = message;
        const canRetune = (message.retune || []).includes("cor_px");
        $("retune-apply").disabled = !canRetune;
        $("refilter-apply").disabled = !(message.retune || []).includes("filter");
        $("rephase-apply").disabled = !(message.retune || []).includes("delta_beta");
        if (canRetune && !view.retune) $("retune-reply").textContent =
          "Applies to the scan being reconstructed from its next volume, else to the last scan's final volume.";
      }
      if (message.type === "status") {
        view.status = message.status; view.statusAge = message.age_s; view.statusAt = performance.now();
        renderStatus();
        tick();
      }
      return;
    }
    view.image = unpack(event.data);
    view.imageAt = performance.now();
    view.images += 1;
    render();
    renderStatus();
  };
}

$("scale-apply").onclick = () => {
  const low = Number($("scale-min").value), high = Number($("scale-max").value);
  if (!view.image || !(high > low)) return;
  view.override = { key: view.image.meta.scan_key, low, high };
  render();
};
$("scale-fit").onclick = () => {
  if (!view.image) return;
  let low = Infinity, high = -Infinity;
  for (const a of Object.values(view.image.arrays)) for (const v of a.data) {
    if (Number.isFinite(v)) { low = Math.min(low, v); high = Math.max(high, v); }
  }
  if (high > low) view.override = { key: view.image.meta.scan_key, low, high };
  render();
};
$("scale-scan").onclick = () => { view.override = null; render(); };
$("colormap").onchange = () => { view.lut = makeLut($("colormap").value); render(); };
$("chosen-axis").onchange = () => {
  const axis = $("chosen-axis").value;
  if (axis && view.image) {
    const n = view.image.meta.shape["zyx".indexOf(axis)];
    $("chosen-index").max = n - 1;
    $("chosen-index").value = Math.floor(n / 2);
  }
  requestSlice();
};
$("chosen-index").oninput = requestSlice;

// Re-centring: the viewer forwards it to the daemon's control socket and hands back its reply.
async function retune(params) {
  const note = $("retune-reply");
  note.textContent = "asking the daemon…";
  let reply;
  try {
    const answer = await fetch("/api/set", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(params) });
    reply = await answer.json();
  } catch (err) {
    reply = { ok: false, error: `no answer from the viewer: ${err}` };
  }
  view.retune = { params, reply };
  note.className = reply.ok ? "note good" : "note bad";
  const asked = Object.entries(params).map(([k, v]) => `${k} ${k === "cor_px" ? fmt(reply.cor_px, 5) : v}`);
  const notRetuned = Object.entries(reply.not_retuned || {}).map(([k, why]) => `${k} from the next scan only: ${why}`);
  note.textContent = !reply.ok ? `refused: ${reply.error}`
    : notRetuned.length && !reply.retune_applies ? notRetuned.join("; ")
    : [`${asked.join(", ")} for ${reply.scan_id}: ${reply.retune_applies || reply.applies || "accepted"}`,
       ...notRetuned].join("; ");
}
$("rephase").onsubmit = (event) => {
  event.preventDefault();
  const params = {}, deltaBeta = $("retune-delta-beta").value.trim(), chain = $("retune-phase").value.trim();
  if (deltaBeta !== "") params.delta_beta = Number(deltaBeta);
  if (chain !== "") params.phase = chain;
  if (!Object.keys(params).length || (deltaBeta !== "" && !(Number(deltaBeta) > 0))) {
    $("retune-reply").textContent = "type δ/β (a number > 0) and/or a phase chain (e.g. paganin, ap**8)";
    return;
  }
  retune(params);
};
$("refilter").onsubmit = (event) => {
  event.preventDefault();
  retune({ filter: $("retune-filter").value });
};
$("retune").onsubmit = (event) => {
  event.preventDefault();
  const value = $("retune-cor").value.trim();
  if (value === "" || !Number.isFinite(Number(value))) {
    $("retune-reply").textContent = "type the centre in unbinned detector pixels (offset from the middle)";
    return;
  }
  retune({ cor_px: Number(value) });
};

connect();
setInterval(tick, 250);
