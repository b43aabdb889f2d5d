"""A self-contained HTML report of one run: every stage's quality figures, plots and videos.

Users of the original could not tell whether depth, flow or masks were right. The page shows each
stage's figures (depth positivity and scale drift, flow consistency, mask coverage and stability,
fit PSNR), a preview picture per stage, per-frame plots, the camera path and the output videos,
all inlined so the one file can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import math

from gflow.v1 import common_pb2, pipeline_pb2
from services.common.artifacts import Artifacts
from services.common.keys import content_key

MEDIA_PNG = "image/png"
MEDIA_MP4 = "video/mp4"

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;
text-align:left;font-size:.9rem}th{background:#f4f4f4}.plots{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0}figcaption{font-size:.85rem;color:#555}img,video{max-width:100%}
.cached{color:#777;font-size:.85rem}
"""


def line_plot_svg(values: list[float], title: str, width: int = 320, height: int = 160) -> str:
    """An inline SVG polyline of one per-frame series; NaN points are skipped, empty is said."""
    finite = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
    label = f'<text x="6" y="14" font-size="12">{html.escape(title)}</text>'
    if not finite:
        return f'{head}{label}<text x="6" y="40" font-size="12">no values</text></svg>'
    lo = min(v for _, v in finite)
    hi = max(v for _, v in finite)
    span = hi - lo or 1.0
    n = max(len(values) - 1, 1)
    left, top, right, bottom = 40, 22, width - 8, height - 18

    def xy(i: int, v: float) -> str:
        x = left + (right - left) * i / n
        y = bottom - (bottom - top) * (v - lo) / span
        return f"{x:.1f},{y:.1f}"

    points = " ".join(xy(i, v) for i, v in finite)
    return (
        f"{head}{label}"
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="none" stroke="#ccc"/>'
        f'<text x="2" y="{top + 10}" font-size="10">{hi:.3g}</text>'
        f'<text x="2" y="{bottom}" font-size="10">{lo:.3g}</text>'
        f'<text x="{left}" y="{height - 4}" font-size="10">0</text>'
        f'<text x="{right - 20}" y="{height - 4}" font-size="10">{len(values) - 1}</text>'
        f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{points}"/>'
        + "".join(
            f'<circle cx="{xy(i, v).split(",")[0]}" cy="{xy(i, v).split(",")[1]}" r="1.8" '
            'fill="#1f6feb"/>'
            for i, v in finite
        )
        + "</svg>"
    )


def path_plot_svg(xz: list[list[float]], title: str, size: int = 240) -> str:
    """Top-down (x, z) view of the camera centres; an empty path is said, not drawn."""
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img">'
    label = f'<text x="6" y="14" font-size="12">{html.escape(title)}</text>'
    if not xz:
        return f'{head}{label}<text x="6" y="40" font-size="12">no cameras</text></svg>'
    xs, zs = [p[0] for p in xz], [p[1] for p in xz]
    span = max(max(xs) - min(xs), max(zs) - min(zs), 1e-9)
    margin = 24

    def xy(x: float, z: float) -> str:
        px = margin + (size - 2 * margin) * (x - min(xs)) / span
        pz = size - margin - (size - 2 * margin) * (z - min(zs)) / span
        return f"{px:.1f},{pz:.1f}"

    points = " ".join(xy(x, z) for x, z in xz)
    start = xy(*xz[0]).split(",")
    return (
        f'{head}{label}<polyline fill="none" stroke="#d1242f" stroke-width="1.5" '
        f'points="{points}"/><circle cx="{start[0]}" cy="{start[1]}" r="3" fill="#2da44e"/>'
        f'<text x="6" y="{size - 6}" font-size="10">x right, z forward; green = first frame'
        "</text></svg>"
    )


def _figures_table(result: common_pb2.StageResult) -> str:
    if not result.quality:
        return "<p>No quality figures.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(q.name)}</td><td>{q.value:.4g}</td><td>{html.escape(q.unit)}</td>"
        "</tr>"
        for q in result.quality
    )
    return f"<table><tr><th>figure</th><th>value</th><th>unit</th></tr>{rows}</table>"


def _data_uri(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def _stage_section(artifacts: Artifacts, result: common_pb2.StageResult) -> str:
    title = html.escape(result.stage or "stage")
    cached = ' <span class="cached">(from the store)</span>' if result.cached else ""
    parts = [
        f'<h2 id="{title}">{title}: {html.escape(result.backend)}{cached}</h2>',
        f"<p><code>{html.escape(result.key)}</code></p>",
        _figures_table(result),
    ]
    report = (
        artifacts.get_json(result.report, f"{result.stage}.report") if result.report.key else {}
    )
    plots = [line_plot_svg(list(v), k) for k, v in sorted(report.get("series", {}).items())]
    if report.get("camera_path_xz"):
        plots.append(path_plot_svg(report["camera_path_xz"], "camera path (top view)"))
    if plots:
        parts.append('<div class="plots">' + "".join(plots) + "</div>")
    for item in result.artifacts:
        media = item.ref.media_type
        if media == MEDIA_PNG:
            uri = _data_uri(artifacts.get_bytes(item.ref), media)
            parts.append(
                f'<figure><img alt="{html.escape(item.name)}" src="{uri}">'
                f"<figcaption>{html.escape(item.name)}</figcaption></figure>"
            )
        elif media == MEDIA_MP4:
            uri = _data_uri(artifacts.get_bytes(item.ref), media)
            parts.append(
                f'<figure><video controls loop muted playsinline src="{uri}" '
                f'data-name="{html.escape(item.name)}"></video>'
                f"<figcaption>{html.escape(item.name)}</figcaption></figure>"
            )
    for note in report.get("repairs", []):
        parts.append(f"<p>Repaired: {html.escape(str(note))}</p>")
    return "\n".join(parts)


def render_report_html(artifacts: Artifacts, result: pipeline_pb2.PipelineResult) -> str:
    video = result.video
    stages = [result.flow, result.depth, result.segment, result.fit]
    overview = "".join(
        f'<tr><td><a href="#{html.escape(s.stage)}">{html.escape(s.stage)}</a></td>'
        f"<td>{html.escape(s.backend)}</td><td>{'yes' if s.cached else 'no'}</td></tr>"
        for s in stages
    )
    body = "\n".join(_stage_section(artifacts, s) for s in stages)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>GFlow run report</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>GFlow run report</h1>"
        f"<p>{video.frame_count} frames, {video.width}x{video.height} px, {video.fps:.3g} fps; "
        f"content <code>{html.escape(video.content_hash[:16])}</code></p>"
        f"<table><tr><th>stage</th><th>backend</th><th>from the store</th></tr>{overview}</table>"
        f"{body}</body></html>"
    )


def write_report(
    artifacts: Artifacts, result: pipeline_pb2.PipelineResult
) -> common_pb2.ArtifactRef:
    """Store the report under a key derived from the stage results it shows."""
    stages = [result.flow.key, result.depth.key, result.segment.key, result.fit.key]
    key = content_key("report", "html", {}, stages)
    page = render_report_html(artifacts, result)
    return artifacts.put_bytes(f"{key}/report.html", page.encode(), "text/html")
