"""Screen recordings: ffmpeg's x11grab into an H.264 mp4, one at a time. Stopping sends ffmpeg
``q`` so it writes the mp4's index (a killed ffmpeg leaves an unreadable file). At most
MAX_RECORDINGS stay on disk (the oldest stopped one is deleted when another starts) and a
recording stops itself after MAX_RECORDING_S."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import MAX_RECORDING_S, MAX_RECORDINGS, RECORDING_FPS

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0
MIME = "video/mp4"


class RecordingActiveError(Exception):
    pass


class NotRecordingError(Exception):
    pass


class UnknownRecordingError(Exception):
    pass


@dataclass
class Recording:
    id: str
    path: Path
    display: str
    resolution: str
    started_at: str
    stopped_at: str = ""
    proc: asyncio.subprocess.Process | None = None

    @property
    def active(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def status(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "active": self.active,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "download": f"/api/recordings/{self.id}/download",
            "mime_type": MIME,
            "file_name": self.path.name,
            "display": self.display,
            "resolution": self.resolution,
        }

    def summary(self) -> dict[str, Any]:
        try:
            size = self.path.stat().st_size
        except OSError:
            size = 0
        return {
            "id": self.id,
            "file_name": self.path.name,
            "download": f"/api/recordings/{self.id}/download",
            "mime_type": MIME,
            "size_bytes": size,
            "created_at": self.started_at,
            "active": self.active,
        }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


class Recorder:
    def __init__(self, directory: Path, display: str) -> None:
        self.directory = directory
        self.display = display
        self.recordings: dict[str, Recording] = {}
        self.latest: Recording | None = None
        self._lock = asyncio.Lock()
        self._limit: asyncio.Task[None] | None = None

    def current(self) -> dict[str, Any]:
        if self.latest is None:
            return {"id": "", "active": False, "display": self.display, "mime_type": MIME}
        return self.latest.status()

    async def start(self, width: int, height: int) -> dict[str, Any]:
        async with self._lock:
            if self.latest is not None and self.latest.active:
                raise RecordingActiveError
            self._prune()
            rec_id = f"rec_{secrets.token_hex(8)}"
            path = self.directory / f"{rec_id}.mp4"
            argv = [
                "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostats",
                "-f", "x11grab", "-draw_mouse", "1", "-framerate", str(RECORDING_FPS),
                "-video_size", f"{width}x{height}", "-i", f"{self.display}.0+0,0",
                "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-movflags", "+faststart", "-y", str(path),
            ]  # fmt: skip
            with (self.directory / f"{rec_id}.log").open("wb") as err:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=err,
                    env={**os.environ}, start_new_session=True,
                )  # fmt: skip
            recording = Recording(rec_id, path, self.display, f"{width}x{height}", _now(), proc=proc)
            self.recordings[rec_id] = recording
            self.latest = recording
            self._limit = asyncio.create_task(self._stop_after(recording, MAX_RECORDING_S))
            return recording.status()

    async def stop(self) -> dict[str, Any]:
        async with self._lock:
            recording = self.latest
            if recording is None or not recording.active:
                raise NotRecordingError
            if self._limit is not None:
                self._limit.cancel()
            await self._finish(recording)
            return recording.status()

    async def _stop_after(self, recording: Recording, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        async with self._lock:
            if recording.active:
                await self._finish(recording)

    async def _finish(self, recording: Recording) -> None:
        proc = recording.proc
        assert proc is not None
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(b"q")
                await proc.stdin.drain()
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("ffmpeg did not stop on q; killing it")
            proc.kill()
            await proc.wait()
        recording.stopped_at = _now()
        (self.directory / f"{recording.id}.log").unlink(missing_ok=True)

    def get(self, rec_id: str) -> Recording:
        recording = self.recordings.get(rec_id)
        if recording is None:
            raise UnknownRecordingError(rec_id)
        return recording

    def list(self) -> list[dict[str, Any]]:
        return [recording.summary() for recording in self.recordings.values()]

    async def delete(self, rec_id: str) -> None:
        async with self._lock:
            recording = self.get(rec_id)
            if recording.active:
                raise RecordingActiveError
            recording.path.unlink(missing_ok=True)
            del self.recordings[rec_id]
            if self.latest is recording:
                self.latest = None

    def _prune(self) -> None:
        while len(self.recordings) >= MAX_RECORDINGS:
            oldest = next(iter(self.recordings.values()))
            oldest.path.unlink(missing_ok=True)
            del self.recordings[oldest.id]

    async def close(self) -> None:
        async with self._lock:
            if self.latest is not None and self.latest.active:
                await self._finish(self.latest)
