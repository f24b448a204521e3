"""Generated image-caption datasets for the eval tests: PIL drawings and captions saying what
they show, written as Karpathy JSON, JSONL or a caption folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (230, 200, 40),
    "purple": (150, 60, 170),
    "orange": (240, 130, 30),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    background: str

    @property
    def captions(self) -> list[str]:
        return [
            f"a {self.color} {self.shape} on a {self.background} background",
            f"{self.color} {self.shape}, {self.background} behind it",
        ]

    def draw(self, size: tuple[int, int] = (96, 80)) -> Image.Image:
        w, h = size
        img = Image.new("RGB", size, BACKGROUNDS[self.background])
        d = ImageDraw.Draw(img)
        box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
        fill = COLORS[self.color]
        if self.shape == "circle":
            d.ellipse(box, fill=fill)
        elif self.shape == "square":
            d.rectangle(box, fill=fill)
        else:
            d.polygon([(w // 4, 3 * h // 4), (w // 2, h // 4), (3 * w // 4, 3 * h // 4)], fill=fill)
        return img


def scenes(n: int) -> list[Scene]:
    """n distinct scenes (up to 18), each with captions no other scene has."""
    colors, bgs = list(COLORS), list(BACKGROUNDS)
    return [
        Scene(colors[i % len(colors)], SHAPES[i % len(SHAPES)], bgs[(i // len(colors)) % len(bgs)])
        for i in range(n)
    ]


def save_images(folder: Path, items: list[Scene], prefix: str = "img") -> list[str]:
    """Write the drawings as JPEGs; returns their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, s in enumerate(items):
        name = f"{prefix}{i:03d}.jpg"
        s.draw().save(folder / name, quality=92)
        names.append(name)
    return names


def write_karpathy(path: Path, names: list[str], captions: list[list[str]], splits: list[str]) -> Path:
    images = [
        {
            "filename": name,
            "imgid": i,
            "split": split,
            "sentences": [{"raw": c, "tokens": c.split()} for c in caps],
        }
        for i, (name, caps, split) in enumerate(zip(names, captions, splits, strict=True))
    ]
    path.write_text(json.dumps({"dataset": "generated", "images": images}))
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
