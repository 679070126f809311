"""One HTML page of search results, with a keyframe of each hit, so a person can look instead of read.

Why a single self-contained file: thumbnails are embedded as JPEG data URIs, so the page can be
mailed, copied off a cluster or opened from a laptop without the video folder. The keyframe is the
frame shown at the middle of the window, decoded with PyAV (seek to the key frame before it, decode
forward); a video that is not in `--videos` or fails to decode gets a placeholder, never an error.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

from howto_prep.files import atomic_write_text

logger = logging.getLogger(__name__)

THUMB_SIZE = (320, 180)


def keyframe_jpeg(path: Path, seconds: float) -> bytes | None:
    """The frame shown at `seconds` as a JPEG of at most THUMB_SIZE; None when it cannot be decoded."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.time_base is not None:
                container.seek(max(0, int(seconds / stream.time_base)), stream=stream, backward=True, any_frame=False)
            chosen = None
            for frame in container.decode(stream):
                if chosen is not None and frame.time is not None and frame.time > seconds:
                    break
                chosen = frame
            if chosen is None:
                return None
            image = chosen.to_image()
            image.thumbnail(THUMB_SIZE)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
            return buffer.getvalue()
    except (av.error.FFmpegError, OSError, IndexError, ValueError):
        return None


def _thumbnail_cell(videos: dict[str, Path] | None, hit: dict) -> str:
    if videos is None:
        return '<td class="thumb">(no --videos)</td>'
    path = videos.get(hit["video_id"])
    data = keyframe_jpeg(path, (hit["start"] + hit["end"]) / 2) if path else None
    if data is None:
        return f'<td class="thumb">{"not decodable" if path else "video not found"}</td>'
    encoded = base64.b64encode(data).decode()
    return f'<td class="thumb"><img src="data:image/jpeg;base64,{encoded}" alt="keyframe"></td>'


def results_page(report: dict, videos: dict[str, Path] | None) -> str:
    """The page's HTML for a search report (mft_train.retrieval.search.search_report)."""
    from mft_train.retrieval.search import clock

    esc = html.escape
    rows = []
    for hit in report["results"]:
        rows.append(
            f"<tr><td>{hit['rank']}</td>{_thumbnail_cell(videos, hit)}<td><code>{esc(hit['video_id'])}</code></td>"
            f"<td>{clock(hit['start'])}&ndash;{clock(hit['end'])}</td><td>{hit['score']:.3f}</td>"
            f"<td>{esc(hit['caption'])}</td></tr>")
    oov = report["out_of_vocabulary"]
    notes = f"<p>Out of vocabulary (left out): {esc(', '.join(oov))}</p>" if oov else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>search: {esc(report['query'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ccc;padding:6px 10px;text-align:left;vertical-align:middle}}
td.thumb{{width:{THUMB_SIZE[0]}px;color:#888}}</style></head><body>
<h1>&ldquo;{esc(report['query'])}&rdquo;</h1>
<p>Words used: {esc(' '.join(report['words']))}. Target {esc(report['target'])} over {report['windows']} windows of
{report['videos']} videos in <code>{esc(report['index'])}</code>; scores are cosine similarities.</p>{notes}
<table><tr><th>rank</th><th>keyframe (window middle)</th><th>video id</th><th>window</th><th>score</th>
<th>caption nearest in time</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""


def write_results_page(path: Path, report: dict, videos_dir: Path | None) -> None:
    """Write the page; `videos_dir` (a download folder or any folder of <id>.<ext> files) gives thumbnails."""
    videos = None
    if videos_dir is not None:
        from howto_prep.extract.inputs import find_videos

        videos = find_videos(videos_dir)
        missing = sorted({hit["video_id"] for hit in report["results"]} - set(videos))
        if missing:
            logger.warning("search: %d hit video(s) not in %s (e.g. %s): no thumbnail", len(missing), videos_dir, missing[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, results_page(report, videos))
