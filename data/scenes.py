"""Procedural video scenes: textured objects moving at different speeds in front of one another,
filmed by a panning and zooming camera, each with a caption that describes it.

Clips are rendered on the fly from a seed (nothing is stored), at any frame count and resolution:
the scene is laid out in units of the frame height, so the same clip index gives the same scene
at 36x64 and at 72x128 pixels. Harder than ``data.synthetic``'s flat shapes on a flat background:
textures on the objects and the background, occlusion, camera motion and speeds all have to be
modelled across space and time, which is what separates full attention from sparse attention in
the pre-training experiment (``eval.reproduce_pretraining``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from data.video_dataset import VideoSample

PALETTE = {
    "red": (214, 48, 49),
    "orange": (243, 146, 35),
    "yellow": (240, 216, 62),
    "green": (56, 176, 84),
    "teal": (32, 160, 160),
    "blue": (52, 96, 220),
    "purple": (140, 72, 200),
    "pink": (236, 120, 180),
    "white": (236, 236, 236),
    "black": (24, 24, 28),
}
SHAPES = ("circle", "square", "triangle", "diamond")
TEXTURES = ("plain", "striped", "checkered", "dotted")
DIRECTIONS = {  # unit (dx, dy), y pointing down
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "down": (0.0, 1.0),
    "up": (0.0, -1.0),
    "down and right": (0.7071, 0.7071),
    "down and left": (-0.7071, 0.7071),
    "up and right": (0.7071, -0.7071),
    "up and left": (-0.7071, -0.7071),
}
SPEEDS = {"slowly": (0.004, 0.010), "quickly": (0.018, 0.030)}  # frame heights per frame
SPLITS = ("train", "val")


@dataclass(frozen=True)
class SceneObject:
    """One object; lengths in frame heights, positions in scene coordinates at frame 0."""

    shape: str
    colour: str
    texture: str
    direction: str
    speed: str
    radius: float
    start: tuple[float, float]  # centre (x, y)
    velocity: tuple[float, float]  # per frame
    period: float  # of its texture
    angle: float  # of its stripes, radians

    @property
    def caption(self) -> str:
        texture = "" if self.texture == "plain" else f"{self.texture} "
        return f"a {texture}{self.colour} {self.shape} moving {self.direction} {self.speed}"


@dataclass(frozen=True)
class Camera:
    """Pans towards ``pan`` (a :data:`DIRECTIONS` name, or None) by ``pan_speed`` frame heights
    per frame, and zooms linearly from 1 to ``zoom`` over the clip."""

    pan: str | None
    pan_speed: float
    zoom: float

    def offset(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scene position of the view's centre at frames ``t``, relative to frame 0."""
        dx, dy = DIRECTIONS[self.pan] if self.pan else (0.0, 0.0)
        return dx * self.pan_speed * t, dy * self.pan_speed * t

    @property
    def caption(self) -> str:
        moves = [f"pans {self.pan}"] if self.pan else []
        if self.zoom != 1.0:
            moves.append("zooms in" if self.zoom > 1 else "zooms out")
        return "the camera " + " and ".join(moves) if moves else "the camera is still"


@dataclass(frozen=True)
class Scene:
    """A clip's content: background colours and pattern, objects back to front, camera."""

    background: tuple[str, str]
    waves: np.ndarray  # [n, 4]: (kx, ky, phase, weight) of the background's pattern
    objects: tuple[SceneObject, ...]
    camera: Camera

    @property
    def caption(self) -> str:
        objects = ", in front of it ".join(o.caption for o in self.objects)
        colours = " and ".join(self.background)
        return f"{objects}, over a {colours} background; {self.camera.caption}"


def sample_scene(rng: np.random.Generator, aspect: float) -> Scene:
    """Draw a scene for a view ``aspect`` (width / height) frame heights wide.

    Two to four objects, each starting inside the view; the camera pans (two in three clips),
    zooms (one in two) or both. Draw order is fixed, so a generator seeded alike gives the same
    scene.
    """
    colours = list(PALETTE)
    background = tuple(str(c) for c in rng.choice(colours, size=2, replace=False))
    waves = np.stack(
        [
            rng.uniform(-6, 6, size=4),  # kx, ky: cycles per frame height
            rng.uniform(-6, 6, size=4),
            rng.uniform(0, 2 * np.pi, size=4),
            rng.uniform(0.5, 1.0, size=4),
        ],
        axis=1,
    )
    objects = []
    for _ in range(int(rng.integers(2, 5))):
        direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
        speed = list(SPEEDS)[int(rng.integers(len(SPEEDS)))]
        magnitude = rng.uniform(*SPEEDS[speed])
        radius = rng.uniform(0.12, 0.24)
        dx, dy = DIRECTIONS[direction]
        objects.append(
            SceneObject(
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                colour=str(rng.choice([c for c in colours if c not in background])),
                texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
                direction=direction,
                speed=speed,
                radius=radius,
                start=(rng.uniform(radius, aspect - radius), rng.uniform(radius, 1 - radius)),
                velocity=(dx * magnitude, dy * magnitude),
                period=rng.uniform(0.08, 0.16),
                angle=rng.uniform(0, np.pi),
            )
        )
    pans = rng.uniform() < 2 / 3
    pan = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
    pan_speed = rng.uniform(0.005, 0.015)
    zooms = rng.uniform() < 1 / 2
    zoom = float(rng.choice([0.75, 0.85, 1.2, 1.35]))
    camera = Camera(pan if pans else None, pan_speed if pans else 0.0, zoom if zooms else 1.0)
    return Scene(background, waves, tuple(objects), camera)


def render_scene(scene: Scene, num_frames: int, height: int, width: int) -> np.ndarray:
    """uint8 frames ``[T, H, W, 3]`` of ``scene``.

    Each pixel's centre is mapped to scene coordinates through the camera (pan, then zoom about
    the view's centre); the background pattern and the objects' textures live in scene and
    object coordinates, so they move with the camera and the objects. Objects are painted back
    to front, so later ones hide earlier ones.
    """
    aspect = width / height
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    zoom = 1 + (scene.camera.zoom - 1) * t / max(num_frames - 1, 1)
    ys = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None] / height
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :] / height
    pan_x, pan_y = scene.camera.offset(t)
    shape = (num_frames, height, width)
    x = np.broadcast_to(aspect / 2 + (xs - aspect / 2) / zoom + pan_x, shape)
    y = np.broadcast_to(0.5 + (ys - 0.5) / zoom + pan_y, shape)
    pattern = sum(
        weight * np.sin(np.float32(2 * np.pi) * (kx * x + ky * y) + phase)
        for kx, ky, phase, weight in scene.waves.astype(np.float32)
    )
    mix = (0.5 + 0.5 * np.tanh(pattern))[..., None]
    first, second = (np.array(PALETTE[c], dtype=np.float32) for c in scene.background)
    frames = (1 - mix) * first + mix * second
    # which object (1 + its index; 0: none) shows at each pixel, and whether its texture is dark
    top = np.zeros(shape, dtype=np.int64)
    dark = np.zeros(shape, dtype=np.int64)
    for number, obj in enumerate(scene.objects, start=1):
        lx = x - (obj.start[0] + obj.velocity[0] * t)
        ly = y - (obj.start[1] + obj.velocity[1] * t)
        inside = _shape_mask(obj.shape, lx, ly, obj.radius)
        top[inside] = number
        dark[inside] = _texture_mask(obj, lx[inside], ly[inside])
    shades = np.array([[PALETTE[o.colour], np.multiply(PALETTE[o.colour], 0.45)]
                       for o in scene.objects], dtype=np.float32)
    shades = shades.reshape(-1, 2, 3)  # [objects, plain or dark, RGB], also with no objects
    painted = top > 0
    frames[painted] = shades[top[painted] - 1, dark[painted]]
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _shape_mask(shape: str, lx: np.ndarray, ly: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return lx * lx + ly * ly <= r * r
    if shape == "square":
        return (np.abs(lx) <= 0.8 * r) & (np.abs(ly) <= 0.8 * r)
    if shape == "diamond":
        return np.abs(lx) + np.abs(ly) <= r
    # upward triangle: apex at (0, -r), base of width 2r at y = r
    return (ly <= r) & (np.abs(lx) <= (ly + r) / 2)


def _texture_mask(obj: SceneObject, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Where the object's texture is dark (its own coordinates, so it travels with it)."""
    p = obj.period
    if obj.texture == "striped":
        u = lx * np.cos(obj.angle) + ly * np.sin(obj.angle)
        return np.floor(u / p) % 2 == 1
    if obj.texture == "checkered":
        return (np.floor(lx / p) + np.floor(ly / p)) % 2 == 1
    if obj.texture == "dotted":
        cx, cy = lx / p - np.floor(lx / p) - 0.5, ly / p - np.floor(ly / p) - 0.5
        return cx * cx + cy * cy <= 0.09
    return np.zeros(lx.shape, dtype=bool)


def check_scene_shape(num_frames: int, resolution: tuple[int, int]) -> None:
    """ValueError unless clips of ``num_frames`` frames of ``resolution`` can be rendered."""
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2 so that things move, got {num_frames}")
    if len(resolution) != 2 or min(resolution) < 8:
        raise ValueError(f"resolution must be (height, width), each >= 8, got {resolution}")


class ProceduralScenes(Dataset[VideoSample]):
    """``num_clips`` procedural clips of one split, rendered when indexed.

    Clip ``i`` of ``split`` is drawn from a generator seeded with ``(seed, split, i)``: the train
    and val splits never share a clip, and the same arguments give the same clips on any machine.

    Args:
        num_clips: clips in the split, >= 1.
        num_frames: frames per clip T, >= 2.
        resolution: (height, width) of every frame, each >= 8.
        split: ``"train"`` or ``"val"``.
        seed: non-negative content seed.

    Items are :class:`~data.video_dataset.VideoSample`: ``video`` float32 ``[3, T, H, W]`` in
    [-1, 1] (uint8 / 127.5 - 1, as decoded clips), ``caption``, ``index`` (= ``i``).
    """

    skipped: tuple = ()  # nothing is ever unreadable (the datamodule's summary asks)

    def __init__(
        self,
        num_clips: int,
        num_frames: int,
        resolution: tuple[int, int],
        split: str = "train",
        seed: int = 0,
    ) -> None:
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        check_scene_shape(num_frames, resolution)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_clips = num_clips
        self.num_frames = num_frames
        self.height, self.width = resolution
        self.split = split
        self.seed = seed

    def __len__(self) -> int:
        return self.num_clips

    def scene(self, index: int) -> Scene:
        """The scene of clip ``index``."""
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip {index} of a split of {self.num_clips}")
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        return sample_scene(rng, self.width / self.height)

    def __getitem__(self, index: int) -> VideoSample:
        scene = self.scene(index)
        frames = render_scene(scene, self.num_frames, self.height, self.width)
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0
        return {"video": video, "caption": scene.caption, "index": index}
