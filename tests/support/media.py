"""Real video files made by the bundled FFmpeg, as a phone, camera or editor would upload them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gpujobs.definitions import video

# Codecs a camera or an editor would put in each container; MP4 and MOV put their index first, as phones
# write them, so a truncated copy still opens.
CODECS_BY_SUFFIX = {
    ".mp4": ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-movflags", "+faststart"],
    ".mov": ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-movflags", "+faststart"],
    ".mkv": ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"],
    ".webm": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus"],
}


def make_clip(
    path: Path, seconds: float = 2, size: str = "320x240", rate: int = 15, audio_only: bool = False
) -> Path:
    """A real clip: FFmpeg's test pattern and a sine tone, in the container the suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sources = (
        [] if audio_only else ["-f", "lavfi", "-i", f"testsrc=duration={seconds}:size={size}:rate={rate}"]
    )
    sources += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    codecs = CODECS_BY_SUFFIX[path.suffix] + ([] if audio_only else ["-pix_fmt", "yuv420p"])
    command = [video.ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *sources]
    subprocess.run([*command, *codecs, "-shortest", str(path)], check=True, timeout=60)
    return path


def ffmpeg_pids_writing_to(directory: Path) -> list[int]:
    """Live processes whose command line names a file in ``directory`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or str(directory) not in (entry / "cmdline").read_text(
                errors="replace"
            ):
                continue
            if (entry / "stat").read_text().split(") ")[1][0] != "Z":  # a zombie has already exited
                pids.append(int(entry.name))
        except OSError:
            continue  # exited while we looked
    return pids
