"""The dashboard: one self-contained HTML page (no CDN; works offline).

Two tables: jobs (with previews) and studies — what arrived, the request error if its instruction was
refused, and why instances were not edited (lateral, CT, no request, ...), which no job shows.
Rows are rendered on the server so the page is complete without JavaScript; a small script then
refreshes the jobs from `GET /jobs` and the studies from `/dashboard/studies` every few seconds. The page
shows patients' images, so it needs read access like every other read (api/auth.py): without it, a form
asks for the token and `POST /login` (or `GET /?token=...`, for links and kiosks) sets the read-only
cookie and comes back here.
"""

from __future__ import annotations

import html
import json
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dicom_node.api.auth import COOKIE, can_read, cookie_value, matching_token, require_reader
from dicom_node.api.deps import get_ctx
from dicom_node.api.views import job_view
from dicom_node.context import NodeContext
from dicom_node.studies.records import list_studies, skip_summary

router = APIRouter()

_STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;background:#f6f7f9;color:#222}
h1{font-size:20px;margin:0 0 4px}.sub{color:#666;margin-bottom:12px}
.banner{background:#8b0000;color:#fff;padding:6px 10px;font-weight:600;border-radius:4px;margin-bottom:12px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #ddd;padding:6px 8px;text-align:left;vertical-align:top;font-size:13px}
th{background:#eef0f3}.state{font-weight:600;padding:2px 6px;border-radius:3px}
.done{background:#d8f5d8}.failed,.dead-letter{background:#f9d6d6}.cancelled{background:#e5e5e5}
.queued,.received{background:#fff3c4}.editing,.edited,.encoding,.sending{background:#d6e6fb}
.thumbs{display:flex;gap:6px}.thumb{text-align:center;font-size:11px;color:#555}
.thumb img,.ph{width:120px;height:120px;object-fit:contain;background:#111;display:block}
.ph{display:flex;align-items:center;justify-content:center;color:#888;background:#333}
.syn{color:#b00;font-weight:700}.uid{font-family:monospace;font-size:11px;color:#555}
.err{color:#a00;font-size:12px;max-width:280px;overflow-wrap:anywhere}
h2{font-size:16px;margin:18px 0 6px}.skip{color:#7a4b00;font-size:12px;overflow-wrap:anywhere}
.processed{background:#d8f5d8}.invalid-request,.error{background:#f9d6d6}.no-request{background:#e5e5e5}
.receiving{background:#fff3c4}
"""

_SCRIPT = """
const KINDS=[["source","source",false],["counterfactual","counterfactual",true],["overlay","guidance overlay",true]];
const ENT={"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"};
function esc(s){return String(s??"").replace(/[&<>"']/g,c=>ENT[c]);}
function secs(t){if(!t)return"";return Object.entries(t)
  .filter(([k,v])=>typeof v==="number"&&k.endsWith("_s")&&!k.startsWith("editor_"))
  .map(([k,v])=>esc(k.replace(/_s$/,""))+" "+v.toFixed(1)+" s").join("<br>");}
function thumb(j,k,label,syn){return '<div class="thumb"><img alt="'+label+'" src="'+j.previews[k]+'?u='+
  encodeURIComponent(j.updated_at)+'" onerror="this.outerHTML=\\'<div class=ph>no '+label+'</div>\\'">'+
  label+(syn?' <span class="syn">SYNTHETIC</span>':'')+'</div>';}
function row(j){return '<tr class="job" data-job-id="'+j.id+'" data-state="'+esc(j.state)+'"><td>'+j.id+
  '</td><td><span class="state '+esc(j.state)+'">'+esc(j.state)+'</span><br>attempts '+j.attempts+
  (j.last_error?'<div class="err">'+esc(j.last_error)+'</div>':'')+'</td><td>'+esc(j.instruction)+
  '<div class="uid">study '+esc(j.study_instance_uid)+'</div></td><td>'+esc(j.created_at)+'</td><td>'+
  secs(j.timings)+'</td><td><div class="thumbs">'+KINDS.map(([k,l,s])=>thumb(j,k,l,s)).join("")+
  '</div></td></tr>';}
async function refresh(){try{const r=await fetch("/jobs?limit=50");if(!r.ok)return;const d=await r.json();
  document.getElementById("rows").innerHTML=d.jobs.map(row).join("")||'<tr><td colspan=6>no jobs yet</td></tr>';
  document.getElementById("counts").textContent=Object.entries(d.counts).filter(([k,v])=>v)
  .map(([k,v])=>k+": "+v).join("  ·  ");}catch(e){}}
async function refreshStudies(){try{const r=await fetch("/dashboard/studies");if(!r.ok)return;
  document.getElementById("studies").innerHTML=await r.text();}catch(e){}}
setInterval(refresh,3000);setInterval(refreshStudies,3000);
"""


def _thumb(job: dict[str, Any], kind: str, label: str, synthetic: bool, present: bool) -> str:
    tag = ' <span class="syn">SYNTHETIC</span>' if synthetic else ""
    if present:
        src = html.escape(f"{job['previews'][kind]}?u={job['updated_at']}")
        img = f'<img alt="{label}" src="{src}">'
    else:
        img = f'<div class="ph">no {label}</div>'
    return f'<div class="thumb">{img}{label}{tag}</div>'


def _timings(timings: dict[str, Any] | None) -> str:
    """The pipeline's stages (edit, encode, send) in seconds; the editor's own breakdown and each stage's
    detail are in GET /jobs/{id}."""
    return "<br>".join(
        f"{html.escape(k.removesuffix('_s'))} {v:.1f} s"
        for k, v in (timings or {}).items()
        if isinstance(v, (int, float)) and k.endswith("_s") and not k.startswith("editor_")
    )


def _row(ctx: NodeContext, job: dict[str, Any]) -> str:
    folder = ctx.settings.results_dir / str(job["id"])
    thumbs = "".join(
        _thumb(job, kind, label, synthetic, (folder / f"{kind}.png").is_file())
        for kind, label, synthetic in (
            ("source", "source", False),
            ("counterfactual", "counterfactual", True),
            ("overlay", "guidance overlay", True),
        )
    )
    error = f'<div class="err">{html.escape(job["last_error"])}</div>' if job.get("last_error") else ""
    state = html.escape(job["state"])
    return (
        f'<tr class="job" data-job-id="{job["id"]}" data-state="{state}"><td>{job["id"]}</td>'
        f'<td><span class="state {state}">{state}</span><br>attempts {job["attempts"]}{error}</td>'
        f'<td>{html.escape(job["instruction"])}<div class="uid">study '
        f'{html.escape(job["study_instance_uid"])}</div></td>'
        f"<td>{html.escape(str(job['created_at']))}</td><td>{_timings(job.get('timings'))}</td>"
        f'<td><div class="thumbs">{thumbs}</div></td></tr>'
    )


def render_study_rows(ctx: NodeContext, limit: int = 50) -> str:
    """The studies table's rows: state, AE titles, counts, and the request error or the skip reasons."""
    records = list_studies(ctx.db, limit=limit)
    reasons = skip_summary(ctx.db, [r.study_instance_uid for r in records])
    rows = []
    for r in records:
        state = html.escape(r.state)
        notes = []
        if r.request_error:
            notes.append(f'<div class="err">request error: {html.escape(r.request_error)}</div>')
        notes += [f'<div class="skip">not edited: {html.escape(why)}</div>'
                  for why in reasons.get(r.study_instance_uid, [])]
        if r.instruction and not r.request_error:
            notes.insert(0, html.escape(r.instruction))
        rows.append(
            f'<tr class="study" data-study-uid="{html.escape(r.study_instance_uid)}" data-state="{state}">'
            f"<td>{html.escape(f'{r.updated_at:%Y-%m-%d %H:%M:%S}')}</td>"
            f'<td><span class="state {state}">{state}</span></td>'
            f'<td><div class="uid">{html.escape(r.study_instance_uid)}</div>'
            f"{html.escape(r.calling_ae or '?')} &rarr; {html.escape(r.called_ae or '?')}</td>"
            f"<td>{r.instance_count} received<br>{r.jobs_created} job(s)<br>{r.skipped_count} not edited</td>"
            f"<td>{''.join(notes)}</td></tr>"
        )
    return "".join(rows) or "<tr><td colspan=5>no studies yet</td></tr>"


def render_dashboard(ctx: NodeContext, limit: int = 50) -> str:
    jobs = [job_view(j) for j in ctx.store.list(limit=limit)]
    counts = ctx.store.count_by_state()
    rows = "".join(_row(ctx, j) for j in jobs) or '<tr><td colspan=6>no jobs yet</td></tr>'
    count_text = "  ·  ".join(f"{k}: {v}" for k, v in counts.items() if v)
    node = ctx.settings.node
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>InstructX2X node — jobs</title>
<style>{_STYLE}</style></head><body>
<h1>InstructX2X DICOM node</h1>
<div class="sub">AE {html.escape(node.ae_title)} · port {node.port} · <span id="counts">{html.escape(count_text)}</span>
 · <a href="/docs">API docs</a> · <a href="/metrics">metrics</a></div>
<div class="banner">Counterfactual images and guidance maps are SYNTHETIC research outputs — not for diagnosis.</div>
<table><thead><tr><th>job</th><th>state</th><th>instruction / study</th><th>created (UTC)</th>
<th>timings</th><th>source · counterfactual · guidance overlay</th></tr></thead>
<tbody id="rows">{rows}</tbody></table>
<h2>Studies: what arrived, request errors, and why instances were not edited</h2>
<table><thead><tr><th>updated (UTC)</th><th>state</th><th>study / calling &rarr; called AE</th>
<th>instances</th><th>request / request error / not edited (reason)</th></tr></thead>
<tbody id="studies">{render_study_rows(ctx, limit)}</tbody></table>
<script>const INITIAL={json.dumps(len(jobs))};{_SCRIPT}</script>
</body></html>"""


_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>InstructX2X node — sign in</title>
<style>{style}</style></head><body>
<h1>InstructX2X DICOM node</h1>
<div class="sub">The dashboard shows patients' images: enter the node's API token (or its read-only token).
It is in <code>&lt;var_dir&gt;/api-token</code> unless <code>[api] token</code> is set.</div>
{error}<form method="post" action="/login"><input type="password" name="token" autocomplete="current-password"
 size="50" autofocus> <button type="submit">Open the dashboard</button></form>
</body></html>"""


def _login_page(error: str = "") -> HTMLResponse:
    note = f'<div class="banner">{html.escape(error)}</div>' if error else ""
    return HTMLResponse(_LOGIN.format(style=_STYLE, error=note), status_code=401,
                        headers={"WWW-Authenticate": "Bearer"})


def _with_cookie(target: str, token: str, request: Request) -> Response:
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, cookie_value(token), httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
@router.get("/dashboard", response_class=HTMLResponse, tags=["dashboard"])
def dashboard(request: Request, ctx: NodeContext = Depends(get_ctx)) -> Response:
    given = request.query_params.get("token")
    if given is not None:  # a link with the token: set the cookie, and drop the token from the address
        token = matching_token(request, given)
        if token is None:
            return _login_page("That token is not this node's.")
        return _with_cookie(request.url.path, token, request)
    if not can_read(request):
        return _login_page()
    return HTMLResponse(render_dashboard(ctx))


@router.get("/dashboard/studies", response_class=HTMLResponse, include_in_schema=False,
            dependencies=[Depends(require_reader)])
def dashboard_studies(ctx: NodeContext = Depends(get_ctx)) -> HTMLResponse:
    """The studies table's rows (the page's script refreshes them)."""
    return HTMLResponse(render_study_rows(ctx))
@router.post("/login", include_in_schema=False)
def login(request: Request, token: str = Form("")) -> Response:
    matched = matching_token(request, token.strip())
    if matched is None:
        return _login_page("That token is not this node's.")
    return _with_cookie("/", matched, request)
