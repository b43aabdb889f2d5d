"""A self-contained HTML report of one run: verdicts, pictures, quality figures, plots, videos.

Users of the original could not tell whether depth, flow or masks were right. The page opens
with a headline and a pass / warn / fail verdict per figure (services.pipeline.verdicts), then a
scrubbable strip of input | reconstruction | depth | moving mask | tracks per frame with its PSNR,
the camera path from above and from the side, and each stage's figures, preview, per-frame plots
and videos, all inlined so the one file can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import json
import math

import cv2
import numpy as np

from gflow.v1 import common_pb2, pipeline_pb2
from services.common.artifacts import Artifacts
from services.common.keys import content_key
from services.common.preview import colorize, overlay_mask, strip
from services.common.stage import optional_artifact
from services.common.video import decode_video, frames_sha256, load_frames
from services.pipeline.verdicts import RunVerdict, judge_run, path_figures

MEDIA_PNG = "image/png"
MEDIA_JPEG = "image/jpeg"
MEDIA_MP4 = "video/mp4"
STRIP_MAX_FRAMES = 60  # frames in the scrubbable strip, evenly spaced over the clip
STRIP_WIDTH_PX = 1060  # width of one strip picture (all panels side by side)
RESULT_NAME = "pipeline_result.pb"  # stored beside the report, for `gflow view --remote-config`

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;
text-align:left;font-size:.9rem}th{background:#f4f4f4}.plots{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0}figcaption{font-size:.85rem;color:#555}img,video{max-width:100%}
.cached{color:#777;font-size:.85rem}
.headline{padding:.7rem 1rem;border-radius:6px;font-weight:600;font-size:1.05rem}
.headline.pass,td.pass{background:#dafbe1}.headline.warn,td.warn{background:#fff8c5}
.headline.fail,td.fail{background:#ffebe9}
.scrub input{width:100%}.scrub img{width:100%}.scrub img[hidden]{display:none}
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


def path_plot_svg(points_n2: list[list[float]], title: str, axes: str, size: int = 240) -> str:
    """One 2D view of the camera centres (first coordinate right, second up, equal scale);
    `axes` names them. An empty path is said, not drawn."""
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img">'
    label = f'<text x="6" y="14" font-size="12">{html.escape(title)}</text>'
    if not points_n2:
        return f'{head}{label}<text x="6" y="40" font-size="12">no cameras</text></svg>'
    us, vs = [p[0] for p in points_n2], [p[1] for p in points_n2]
    span = max(max(us) - min(us), max(vs) - min(vs), 1e-9)
    margin = 24

    def xy(u: float, v: float) -> str:
        px = margin + (size - 2 * margin) * (u - min(us)) / span
        pv = size - margin - (size - 2 * margin) * (v - min(vs)) / span
        return f"{px:.1f},{pv:.1f}"

    points = " ".join(xy(u, v) for u, v in points_n2)
    start = xy(*points_n2[0]).split(",")
    return (
        f'{head}{label}<polyline fill="none" stroke="#d1242f" stroke-width="1.5" '
        f'points="{points}"/><circle cx="{start[0]}" cy="{start[1]}" r="3" fill="#2da44e"/>'
        f'<text x="6" y="{size - 6}" font-size="10">{html.escape(axes)}; green = first frame'
        "</text></svg>"
    )


def _stages(result: pipeline_pb2.PipelineResult) -> list[common_pb2.StageResult]:
    return [result.flow, result.depth, result.segment, result.fit]


def _stage_report(artifacts: Artifacts, result: common_pb2.StageResult) -> dict:
    return artifacts.get_json(result.report, f"{result.stage}.report") if result.report.key else {}


def _fit_c2w(artifacts: Artifacts, result: pipeline_pb2.PipelineResult) -> np.ndarray | None:
    ref = optional_artifact(result.fit, "c2w")
    return None if ref is None else artifacts.get_array(ref, layout="TIJ", field="fit.c2w")


def run_figures(
    artifacts: Artifacts, result: pipeline_pb2.PipelineResult
) -> dict[str, dict[str, float]]:
    """Every stage's quality figures, plus what the verdicts derive for the fit: the worst
    frame's index and the camera path's jump ratios (scene depth from the depth report)."""
    figures = {s.stage: {q.name: q.value for q in s.quality} for s in _stages(result) if s.stage}
    fit = figures.setdefault("fit", {})
    psnr_t = _stage_report(artifacts, result.fit).get("series", {}).get("psnr_db", [])
    if psnr_t:
        fit["psnr_worst_frame"] = float(np.nanargmin(psnr_t))
    c2w_t44 = _fit_c2w(artifacts, result)
    if c2w_t44 is not None:
        depth_t = _stage_report(artifacts, result.depth).get("series", {}).get("median_depth")
        fit.update(path_figures(c2w_t44, float(np.median(depth_t)) if depth_t else 1.0))
    return figures


def run_verdict(artifacts: Artifacts, result: pipeline_pb2.PipelineResult) -> RunVerdict:
    """The run's headline and a verdict per figure (services.pipeline.verdicts)."""
    return judge_run(run_figures(artifacts, result))


def _verdict_section(verdict: RunVerdict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(v.stage)}</td><td>{html.escape(v.figure)}</td><td>{v.value:.4g}"
        f'</td><td class="{v.level}">{v.level}</td><td>{html.escape(v.reason)}</td>'
        f"<td>{html.escape(v.fix)}</td></tr>"
        for v in verdict.verdicts
    )
    return (
        f'<p class="headline {verdict.level}" id="headline">{html.escape(verdict.headline)}</p>'
        '<h2 id="verdicts">Verdicts</h2><table><tr><th>stage</th><th>figure</th><th>value</th>'
        f"<th>verdict</th><th>why</th><th>fix</th></tr>{rows}</table>"
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


def _jpeg(image_hw3: np.ndarray) -> bytes:
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(image_hw3, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def _video_frames(
    artifacts: Artifacts, result: common_pb2.StageResult, name: str
) -> np.ndarray | None:
    ref = optional_artifact(result, name)
    if ref is None:
        return None
    frames, _ = decode_video(artifacts.get_bytes(ref, f"fit.{name}"), ".mp4", f"fit.{name}")
    return np.stack(frames)


def strip_panels(
    artifacts: Artifacts, result: pipeline_pb2.PipelineResult
) -> tuple[list[str], list[np.ndarray]] | None:
    """Panel names and per-frame uint8 [T, H, W, 3] panels of the strip: input, reconstruction,
    depth (one colour scale for the clip), moving mask over the input, and the tracks video.
    None when the run has no fit outputs to show (e.g. a fit that stored no depth)."""
    fit = result.fit
    depth_ref = optional_artifact(fit, "depth")
    masks_ref = optional_artifact(fit, "moving_masks")
    video = result.video
    if depth_ref is None or masks_ref is None or not video.frames.key:
        return None
    hw = (video.height, video.width)
    frames_thw3 = load_frames(artifacts, video, frames_sha256(artifacts, video))
    depth_thw = artifacts.get_array(depth_ref, layout="THW", expect_hw=hw, field="fit.depth")
    masks_thw = artifacts.get_array(masks_ref, layout="THW", expect_hw=hw, field="fit.masks")
    T, H, W = depth_thw.shape
    stacked_hw = depth_thw.reshape(T * H, W)
    names = ["input"]
    panels = [frames_thw3]
    rendered = _video_frames(artifacts, fit, "video_reconstruction")
    if rendered is not None:  # input | reconstruction side by side in that video
        names.append("reconstruction")
        panels.append(rendered[:, :H, W : 2 * W])
    names += ["depth", "moving mask"]
    panels += [
        colorize(stacked_hw, stacked_hw > 0).reshape(T, H, W, 3),
        np.stack(
            [overlay_mask(f, m.astype(bool)) for f, m in zip(frames_thw3, masks_thw, strict=True)]
        ),
    ]
    tracks = _video_frames(artifacts, fit, "video_trajectories")
    if tracks is not None:
        names.append("tracks")
        panels.append(tracks[:, :H, :W])
    return names, panels


def _strip_section(artifacts: Artifacts, result: pipeline_pb2.PipelineResult) -> str:
    """A slider over per-frame pictures (one JPEG per shown frame) with that frame's PSNR."""
    found = strip_panels(artifacts, result)
    if found is None:
        return ""
    names, panels = found
    n_frames = min(len(p) for p in panels)
    shown = np.unique(np.linspace(0, n_frames - 1, min(STRIP_MAX_FRAMES, n_frames)).astype(int))
    psnr_t = _stage_report(artifacts, result.fit).get("series", {}).get("psnr_db", [])
    labels = [
        f"frame {t} of {n_frames - 1}" + (f", PSNR {psnr_t[t]:.1f} dB" if t < len(psnr_t) else "")
        for t in shown
    ]
    images = "".join(
        f'<img alt="frame {t}" data-frame="{t}"{"" if i == 0 else " hidden"} src="'
        + _data_uri(_jpeg(strip([p[t] for p in panels], STRIP_WIDTH_PX)), MEDIA_JPEG)
        + '">'
        for i, t in enumerate(shown)
    )
    return (
        '<h2 id="frames">Frames</h2>'
        f"<p>{' | '.join(html.escape(n) for n in names)}</p>"
        f'<div class="scrub"><input type="range" id="frame-slider" min="0" '
        f'max="{len(shown) - 1}" value="0" aria-label="frame">'
        f'<p id="frame-label">{html.escape(labels[0])}</p><div id="frame-images">{images}</div>'
        "</div><script>(() => {"
        f"const labels = {json.dumps(labels)};"
        "const slider = document.getElementById('frame-slider');"
        "const images = document.querySelectorAll('#frame-images img');"
        "slider.addEventListener('input', () => {"
        "images.forEach((img, i) => { img.hidden = i !== Number(slider.value); });"
        "document.getElementById('frame-label').textContent = labels[slider.value];"
        "});})();</script>"
    )


def _camera_section(artifacts: Artifacts, result: pipeline_pb2.PipelineResult) -> str:
    """The fit's camera centres from above (x, z) and from the side (z, -y: y points down)."""
    c2w_t44 = _fit_c2w(artifacts, result)
    if c2w_t44 is None:
        return ""
    centres_n3 = c2w_t44[:, :3, 3]
    top = centres_n3[:, [0, 2]].tolist()
    side = np.stack([centres_n3[:, 2], -centres_n3[:, 1]], axis=1).tolist()
    return (
        '<h2 id="camera">Camera path</h2><div class="plots">'
        + path_plot_svg(top, "camera path, top view", "x right, z forward")
        + path_plot_svg(side, "camera path, side view", "z forward, y up")
        + "</div>"
    )


def _stage_section(artifacts: Artifacts, result: common_pb2.StageResult) -> str:
    title = html.escape(result.stage or "stage")
    cached = ' <span class="cached">(from the store)</span>' if result.cached else ""
    parts = [
        f'<h2 id="{title}">{title}: {html.escape(result.backend)}{cached}</h2>',
        f"<p><code>{html.escape(result.key)}</code></p>",
        _figures_table(result),
    ]
    report = _stage_report(artifacts, result)
    plots = [line_plot_svg(list(v), k) for k, v in sorted(report.get("series", {}).items())]
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
    stages = _stages(result)
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
        f"{_verdict_section(run_verdict(artifacts, result))}"
        f"<p>{video.frame_count} frames, {video.width}x{video.height} px, {video.fps:.3g} fps; "
        f"content <code>{html.escape(video.content_hash[:16])}</code></p>"
        f"<table><tr><th>stage</th><th>backend</th><th>from the store</th></tr>{overview}</table>"
        f"{_strip_section(artifacts, result)}{_camera_section(artifacts, result)}"
        f"{body}</body></html>"
    )


def write_report(
    artifacts: Artifacts, result: pipeline_pb2.PipelineResult
) -> common_pb2.ArtifactRef:
    """Store the report under a key derived from the stage results it shows, with the pipeline
    result beside it (RESULT_NAME) so a run can be opened from the store by the report's key."""
    stages = [result.flow.key, result.depth.key, result.segment.key, result.fit.key]
    key = content_key("report", "html", {}, stages)
    artifacts.put_bytes(
        f"{key}/{RESULT_NAME}", result.SerializeToString(), "application/x-protobuf"
    )
    page = render_report_html(artifacts, result)
    return artifacts.put_bytes(f"{key}/report.html", page.encode(), "text/html")
