"""Video frames of the camera view with the instruction overlaid, and an MP4 writer.

Frames are the policy's own 64x64 view upscaled with nearest neighbour (so the video shows exactly what the model
saw), with a caption band drawn by Pillow's built-in font (bundled with Pillow: nothing is downloaded).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def upscale(image: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 (H, W, 3) image to (size, size, 3)."""
    h, w = image.shape[:2]
    rows = (np.arange(size) * h) // size
    cols = (np.arange(size) * w) // size
    return image[rows][:, cols]


_FONT = None


def _font():
    global _FONT
    if _FONT is None:
        from PIL import ImageFont

        _FONT = ImageFont.load_default()
    return _FONT


def annotate(frame: np.ndarray, instruction: str, success: bool | None = None, step: int | None = None) -> np.ndarray:
    """Draw the instruction (top band) and the step/success state (bottom band) onto a copy of `frame`."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(frame))
    draw = ImageDraw.Draw(img)
    w, h = img.size
    font = _font()
    band = 14
    draw.rectangle([0, 0, w, band], fill=(0, 0, 0))
    draw.text((3, 1), instruction, fill=(255, 255, 255), font=font)
    status = []
    if step is not None:
        status.append(f"step {step}")
    if success is not None:
        status.append("SUCCESS" if success else "")
    text = "  ".join(s for s in status if s)
    if text:
        draw.rectangle([0, h - band, w, h], fill=(0, 0, 0))
        colour = (80, 255, 80) if success else (255, 255, 255)
        draw.text((3, h - band + 1), text, fill=colour, font=font)
    return np.asarray(img)


class VideoWriter:
    """MP4 (H.264 through imageio-ffmpeg's bundled ffmpeg) written frame by frame, atomically on close."""

    def __init__(self, path: str | Path, fps: float = 20.0):
        import imageio.v2 as imageio

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".tmp.mp4")
        self._writer = imageio.get_writer(
            str(self._tmp), fps=fps, codec="libx264", quality=8, macro_block_size=16, pixelformat="yuv420p",
            ffmpeg_log_level="error",
        )
        self.frames = 0

    def append(self, frame: np.ndarray) -> None:
        self._writer.append_data(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file and move it into place; returns the path, or None when no frame was appended (then no
        file is written, and nothing that was at the path before is replaced)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            if self.frames == 0:
                self._tmp.unlink(missing_ok=True)
                return None
            self._tmp.replace(self.path)
        return self.path if self.frames else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
