"""The page of `charrnn inspect --html`: one self-contained file, no network, no other files.

The text is in the page as one <span> per character, HTML-escaped, so it reads without the
script (a bytes model's: one per byte, a character in the span of its last byte, Trace.shown).
Each layer's activations are stored unit by unit, quantised to 0..255 (Trace.quantised),
as base64 in a <script type="text/plain"> (base64 has no "<", so nothing in it can end the
element). The script decodes a layer the first time it is shown; picking a unit only recolours
the existing spans. At 20,000 characters and 512 units that is 13.7 MB of base64 per layer.
Small data (scores, gate statistics, the palette, character names) is JSON with "<", ">" and
"&" escaped, so no character of it can end its script element either.
"""
from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import numpy as np

from .errors import counted
from .outputs import shown_name, write_output
from .inspection import GATE_CLOSED, GATE_OPEN, PROPERTIES, Found, Scores, Trace, label, palette, visible


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _json(value) -> str:
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _round(a, digits=4):
    return [round(float(x), digits) for x in a]


def page(tr: Trace, scores: Scores, found: list[Found], vocab, layer: int, unit: int, source: str) -> str:
    """The whole page as a string; (layer, unit) is the unit shown first."""
    source = shown_name(source)
    s = tr.spec
    meta = {
        "n": len(tr.text), "k": int(tr.guesses.shape[1]), "layers": s.layers, "hidden": s.hidden, "act": tr.act,
        "range": [tr.value_range(l) for l in range(s.layers)],
        "palette": ["#%02x%02x%02x" % rgb for rgb in palette()],
        "labels": [label(c, tr.encoding == "bytes") for c in vocab.chars], "step": tr.step,
        "properties": [p for p in PROPERTIES if scores.varies[p]],
        "r": [{p: _round(r[p], 3) for p in PROPERTIES if scores.varies[p]} for r in scores.r],
        "saturated": [_round(x, 3) for x in scores.saturated],
        "gates": [{g: [_round(row) for row in frac] for g, frac in layer_gates.items()} for layer_gates in tr.gates],
        "start": {"layer": layer, "unit": unit},
    }
    data = [("text-ids", vocab.encode(tr.text).astype("<u4")),
            ("guess-ids", tr.guesses.astype("<u4")),
            ("guess-p", np.rint(tr.guess_probs * 65535).astype("<u2")),
            ("next-p", np.rint(tr.next_probs * 65535).astype("<u2"))]
    data += [(f"act-{l}", tr.quantised(l)) for l in range(s.layers)]
    blobs = "\n".join(f'<script type="text/plain" id="{name}">{_b64(a)}</script>' for name, a in data)
    text = "".join(f"<span>{html.escape(''.join(map(visible, chars)))}</span>" for chars in tr.shown)
    parts = {
        "title": html.escape(f"charrnn inspect: {source}"),
        "model": html.escape(f"{s.cell} {s.layers}x{s.hidden}, vocabulary {s.vocab_size}; "
                             f"{counted(len(tr.text), tr.step)} of {source}, activation {tr.act}"),
        "found": _found_rows(found),
        "gates": GATES.replace("{step}", tr.step) if tr.gates[0] else f"<p class=\"note\">{s.cell} cells have no gates.</p>",
        "meta": _json(meta),
        "blobs": blobs, "text": text, "step": tr.step, "guesses": str(meta["k"]),
    }
    # one pass over the template: a "{text}" in the user's text is not a slot
    return re.sub(r"\{(" + "|".join(parts) + r")\}", lambda m: parts[m.group(1)], TEMPLATE)


def write_page(path, *args) -> None:
    """page(*args) into `path`, UTF-8 (outputs.check_output has checked the name)."""
    text = page(*args)
    write_output(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _found_rows(found: list[Found]) -> str:
    rows = []
    for f in found:
        about = f' title="{html.escape(PROPERTIES[f.what])}"' if f.what in PROPERTIES else ""
        what = f"<td{about}>{html.escape(f.what)}</td>"
        if f.unit is None:
            rows.append(f"<tr>{what}<td>-</td><td>-</td><td>constant in this text</td></tr>")
            continue
        score = f"r = {f.score:+.3f}" if f.what in PROPERTIES else f"{f.score:.3f}"
        rows.append(f'<tr class="pick" data-layer="{f.layer}" data-unit="{f.unit}">{what}'
                    f"<td>{f.layer}</td><td>{f.unit}</td><td>{score}</td></tr>")
    return "\n".join(rows)


GATES = f"""<section id="gates">
<h2>Gates of this layer</h2>
<p class="note">Each dot is a unit: the share of {{step}}s at which the gate is open (&gt; {GATE_OPEN:g})
against the share at which it is closed (&lt; {GATE_CLOSED:g}); the rest of the time it is in between.
Click a dot to pick its unit.</p>
<div id="gate-plots"></div>
<table id="gate-unit"></table>
</section>"""

TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { padding: 10px 16px; background: #fff; border-bottom: 1px solid #ddd; position: sticky; top: 0; z-index: 1; }
h1 { font-size: 17px; margin: 0 0 4px; }
h2 { font-size: 14px; margin: 14px 0 6px; }
.controls { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin-top: 6px; }
.controls input { width: 6em; }
#scale { display: inline-block; width: 160px; height: 12px; border: 1px solid #bbb; vertical-align: middle; }
#about { color: #444; margin-top: 4px; }
main { display: grid; grid-template-columns: minmax(0, 2fr) minmax(340px, 1fr); gap: 16px; padding: 12px 16px; }
#text { font: 14px/1.5 ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; word-break: break-all;
        background: #fff; border: 1px solid #ddd; padding: 10px; max-height: 78vh; overflow: auto; }
#text span { color: #000; }
#text span:hover { outline: 1px solid #000; }
#text span:empty { display: inline-block; min-width: 0.25em; height: 1em; vertical-align: text-bottom; }
aside table { border-collapse: collapse; width: 100%; }
aside td, aside th { padding: 2px 6px; border-bottom: 1px solid #eee; text-align: right; }
aside td:first-child, aside th:first-child { text-align: left; }
tr.pick { cursor: pointer; }
tr.pick:hover { background: #eef; }
tr.current { background: #dde6ff; }
.note { color: #555; font-size: 12px; }
#gate-plots { display: flex; flex-wrap: wrap; gap: 8px; }
#gate-plots figure { margin: 0; }
#gate-plots figcaption { font-size: 12px; text-align: center; }
canvas { background: #fff; border: 1px solid #ddd; cursor: crosshair; }
#tip { position: fixed; display: none; pointer-events: none; background: #fff; border: 1px solid #888;
       box-shadow: 0 2px 6px rgba(0,0,0,.2); padding: 6px 8px; font: 12px/1.35 ui-monospace, Menlo, Consolas, monospace;
       white-space: pre; z-index: 2; }
</style>
</head>
<body>
<header>
<h1>charrnn inspect</h1>
<div>{model}</div>
<div class="controls">
<label>layer <select id="layer"></select></label>
<label>unit <input id="unit" type="number" min="0" step="1"></label>
<button id="prev" type="button" title="previous unit">&larr;</button>
<button id="next" type="button" title="next unit">&rarr;</button>
<span><span id="lo"></span> <span id="scale"></span> <span id="hi"></span></span>
</div>
<div id="about"></div>
</header>
<main>
<div id="text">{text}</div>
<aside>
<h2>Units that track the text</h2>
<table id="found"><tr><th>what</th><th>layer</th><th>unit</th><th>score</th></tr>
{found}
</table>
<p class="note">r: Pearson correlation of the unit's activation with the property over the text.
Saturation: the mean distance of the activation from the middle of its scale, as a share of half the scale.
Click a row to show its unit; hover over a {step} for the model's {guesses} likeliest next {step}s.</p>
{gates}
</aside>
</main>
<div id="tip"></div>
<script type="application/json" id="meta">{meta}</script>
{blobs}
<script>
"use strict";
const D = JSON.parse(document.getElementById("meta").textContent);
const N = D.n, H = D.hidden, K = D.k;
const spans = document.getElementById("text").children;
for (let i = 0; i < N; i++) spans[i].i = i;

function bytes(id) {
  const s = atob(document.getElementById(id).textContent.trim());
  const b = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
  return b;
}
function view(id) { const b = bytes(id); return new DataView(b.buffer); }
const textIds = view("text-ids"), guessIds = view("guess-ids"), guessP = view("guess-p"), nextP = view("next-p");
const acts = [];  // each layer's (H, N) bytes, decoded when first shown
function layerBytes(l) { return acts[l] || (acts[l] = bytes("act-" + l)); }

const layerSel = document.getElementById("layer"), unitIn = document.getElementById("unit");
for (let l = 0; l < D.layers; l++) {
  const o = document.createElement("option");
  o.value = l; o.textContent = l;
  layerSel.appendChild(o);
}
unitIn.max = H - 1;
let layer = -1, unit = -1, q = null;

function value(level) { const [lo, hi] = D.range[layer]; return lo + level / 255 * (hi - lo); }
function pct(x) { return (100 * x).toFixed(1) + "%"; }

function show(l, u) {
  l = Math.max(0, Math.min(D.layers - 1, l | 0));
  u = Math.max(0, Math.min(H - 1, u | 0));
  const newLayer = l !== layer;
  layer = l; unit = u;
  layerSel.value = l; unitIn.value = u;
  q = layerBytes(l).subarray(u * N, (u + 1) * N);
  for (let i = 0; i < N; i++) spans[i].style.backgroundColor = D.palette[q[i]];
  const [lo, hi] = D.range[l];
  document.getElementById("lo").textContent = lo.toFixed(2);
  document.getElementById("hi").textContent = "+" + hi.toFixed(2);
  describe();
  for (const row of document.querySelectorAll("tr.pick"))
    row.classList.toggle("current", +row.dataset.layer === l && +row.dataset.unit === u);
  if (newLayer) drawGates(); else markGates();
}

function describe() {
  const parts = [`layer ${layer} unit ${unit} (${D.act})`];
  for (const p of D.properties) parts.push(`${p} r = ${D.r[layer][p][unit] >= 0 ? "+" : ""}${D.r[layer][p][unit].toFixed(3)}`);
  parts.push(`saturation ${D.saturated[layer][unit].toFixed(3)}`);
  document.getElementById("about").textContent = parts.join(" \u00b7 ");
  const table = document.getElementById("gate-unit");
  if (!table) return;
  table.textContent = "";
  const head = table.insertRow();
  for (const h of [`unit ${unit}`, "open", "between", "closed"]) head.insertCell().textContent = h;
  for (const [g, [open, between, closed]] of Object.entries(D.gates[layer])) {
    const row = table.insertRow();
    for (const cell of [g, pct(open[unit]), pct(between[unit]), pct(closed[unit])]) row.insertCell().textContent = cell;
  }
}

// Gates: one scatter per gate, x = share closed, y = share open (as in Karpathy et al. 2015)
const S = 130, PAD = 18;
function px(x) { return PAD + x * (S - 2 * PAD); }
function py(y) { return S - PAD - y * (S - 2 * PAD); }
function drawGates() {
  const box = document.getElementById("gate-plots");
  if (!box) return;
  box.textContent = "";
  for (const [g, [open, , closed]] of Object.entries(D.gates[layer])) {
    const fig = document.createElement("figure"), c = document.createElement("canvas");
    c.width = c.height = S; c.gate = g;
    const cap = document.createElement("figcaption");
    cap.textContent = `${g}: mean open ${pct(mean(open))}, closed ${pct(mean(closed))}`;
    fig.append(c, cap);
    box.appendChild(fig);
    c.addEventListener("click", e => {
      const r = c.getBoundingClientRect(), x = e.clientX - r.left, y = e.clientY - r.top;
      let best = 0, dist = Infinity;
      for (let u = 0; u < H; u++) {
        const d = (px(closed[u]) - x) ** 2 + (py(open[u]) - y) ** 2;
        if (d < dist) { dist = d; best = u; }
      }
      show(layer, best);
    });
  }
  markGates();
}
function mean(a) { return a.reduce((s, x) => s + x, 0) / a.length; }
function markGates() {
  for (const c of document.querySelectorAll("#gate-plots canvas")) {
    const [open, , closed] = D.gates[layer][c.gate], ctx = c.getContext("2d");
    ctx.clearRect(0, 0, S, S);
    ctx.strokeStyle = "#999"; ctx.strokeRect(px(0), py(1), px(1) - px(0), py(0) - py(1));
    ctx.fillStyle = "#555"; ctx.font = "10px sans-serif";
    ctx.fillText("closed \\u2192", S / 2 - 22, S - 6);
    ctx.save(); ctx.translate(10, S / 2 + 20); ctx.rotate(-Math.PI / 2); ctx.fillText("open \\u2192", 0, 0); ctx.restore();
    ctx.fillStyle = "rgba(40, 80, 160, 0.45)";
    for (let u = 0; u < H; u++) { ctx.beginPath(); ctx.arc(px(closed[u]), py(open[u]), 2.5, 0, 2 * Math.PI); ctx.fill(); }
    ctx.fillStyle = "#d62728";
    ctx.beginPath(); ctx.arc(px(closed[unit]), py(open[unit]), 5, 0, 2 * Math.PI); ctx.fill();
  }
}

// Hover: the likeliest next characters after this one (meta.k of them)
const tip = document.getElementById("tip");
function name(id) { return D.labels[id]; }
document.getElementById("text").addEventListener("mouseover", e => {
  const i = e.target.i;
  if (i === undefined) return;
  const lines = [`after ${name(textIds.getUint32(4 * i, true))} (${D.step} ${i + 1}), unit ${unit} = ${value(q[i]).toFixed(2)}`];
  for (let k = 0; k < K; k++) {
    const id = guessIds.getUint32(4 * (i * K + k), true), p = guessP.getUint16(2 * (i * K + k), true) / 65535;
    lines.push(`  ${name(id).padEnd(8)} ${pct(p).padStart(6)}`);
  }
  if (i + 1 < N) lines.push(`next: ${name(textIds.getUint32(4 * (i + 1), true))} ${pct(nextP.getUint16(2 * i, true) / 65535)}`);
  tip.textContent = lines.join("\\n");
  tip.style.display = "block";
  const r = e.target.getBoundingClientRect();
  tip.style.left = Math.min(r.left, window.innerWidth - tip.offsetWidth - 8) + "px";
  tip.style.top = (r.bottom + tip.offsetHeight + 8 < window.innerHeight ? r.bottom + 4 : r.top - tip.offsetHeight - 4) + "px";
});
document.getElementById("text").addEventListener("mouseleave", () => { tip.style.display = "none"; });

layerSel.addEventListener("change", () => show(+layerSel.value, unit));
unitIn.addEventListener("change", () => show(layer, +unitIn.value));
document.getElementById("prev").addEventListener("click", () => show(layer, unit - 1));
document.getElementById("next").addEventListener("click", () => show(layer, unit + 1));
for (const row of document.querySelectorAll("tr.pick"))
  row.addEventListener("click", () => show(+row.dataset.layer, +row.dataset.unit));
document.getElementById("scale").style.background =
  "linear-gradient(to right, " + D.palette.filter((_, i) => i % 15 === 0).join(", ") + ")";
show(D.start.layer, D.start.unit);
</script>
</body>
</html>
"""
