"""The confusion matrix and the grid of misclassified images, drawn straight into pixels with Pillow.

Drawing them with matplotlib cost about a second of every training run (its import, font cache and
layout) for two pictures; Pillow draws both in tens of milliseconds and is already installed with
torchvision. matplotlib stays for the precision-recall curves of `imgrec-eval` (imgrec.evaluation.plots).
"""

import math
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (90, 90, 90)
# matplotlib's "Blues" at shares 0, 1/4, 1/2, 3/4 and 1: near-white to dark blue through light blues
BLUES = np.array([[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]], dtype=float)
BLUE_STOPS = np.linspace(0.0, 1.0, len(BLUES))
MAX_NAME = 24  # characters of a class name shown on an axis; the CSV files have the full names


def font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable sans font
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()  # the fixed bitmap font


_MEASURING = ImageDraw.Draw(Image.new("L", (1, 1)))  # text is measured on this, never drawn


def text_size(text: str, face) -> tuple[int, int]:
    left, top, right, bottom = _MEASURING.multiline_textbbox((0, 0), text, font=face)
    return right - left, bottom - top


def shade(share: float) -> tuple[int, int, int]:
    share = min(max(share, 0.0), 1.0)
    return tuple(int(round(np.interp(share, BLUE_STOPS, BLUES[:, channel]))) for channel in range(3))


def paste_rotated(canvas: Image.Image, text: str, face, xy: tuple[int, int], fill=BLACK) -> None:
    """`text` read bottom to top, its top-left corner at `xy`."""
    width, height = text_size(text, face)
    mask = Image.new("L", (width + 2, height + 4))
    ImageDraw.Draw(mask).text((1, 0), text, font=face, fill=255, anchor="la")
    mask = mask.rotate(90, expand=True)
    canvas.paste(Image.new("RGB", mask.size, fill), xy, mask)


def short(name: str) -> str:
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 3] + "..."


class MatrixLayout(NamedTuple):
    left: int  # x of the matrix's first column
    top: int  # y of its first row
    cell: int  # pixels per cell side
    numbers: bool  # counts written in the cells
    rotate_columns: bool  # column names read bottom to top


def matrix_layout(counts: np.ndarray, names: list[str], label_font, title_font) -> MatrixLayout:
    classes = len(names)
    numbers = classes <= 30  # beyond that the numbers are unreadable; the CSV has them
    widest_count = text_size(str(int(counts.max())) if counts.size else "0", label_font)[0]  # most digits
    cell = max(28, widest_count + 10) if numbers else max(6, min(28, 900 // max(classes, 1)))
    name_width = max(text_size(short(n), label_font)[0] for n in names)
    line = text_size("Ag", label_font)[1]
    left = 8 + line + 6 + name_width + 6  # "true", the row names, a gap
    top = 8 + text_size("Ag", title_font)[1] + 10
    return MatrixLayout(left, top, cell, numbers, rotate_columns=name_width > cell - 4)


def confusion_matrix_image(counts, class_names: list[str], title: str = "confusion matrix") -> Image.Image:
    """Rows are true classes, columns predicted ones; colours are the row share (recall per true
    class) with the raw count written in each cell, as in the usual matplotlib figure."""
    counts = np.asarray(counts)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    label_font, title_font = font(12), font(14)
    layout = matrix_layout(counts, class_names, label_font, title_font)
    classes, cell, line = len(class_names), layout.cell, text_size("Ag", label_font)[1]
    side = classes * cell
    names = [short(n) for n in class_names]
    column_names = max(text_size(n, label_font)[0] for n in names) if layout.rotate_columns else line
    bar_x = layout.left + side + 16
    width = max(bar_x + 14 + 8 + text_size("1.0", label_font)[0] + 6 + line + 10, 8 + text_size(title, title_font)[0] + 8)
    height = layout.top + side + 6 + column_names + 6 + line + 10
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 8), title, font=title_font, fill=BLACK)
    for true in range(classes):
        y = layout.top + true * cell
        draw.text((layout.left - 6, y + cell // 2), names[true], font=label_font, fill=BLACK, anchor="rm")
        for predicted in range(classes):
            x = layout.left + predicted * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=shade(shares[true, predicted]))
            if layout.numbers:
                ink = WHITE if shares[true, predicted] > 0.5 else BLACK
                draw.text((x + cell // 2, y + cell // 2), str(int(counts[true, predicted])), font=label_font,
                          fill=ink, anchor="mm")
    below = layout.top + side + 6
    for predicted, name in enumerate(names):
        x = layout.left + predicted * cell + cell // 2
        if layout.rotate_columns:
            name_width = text_size(name, label_font)[0]
            paste_rotated(canvas, name, label_font, (x - line // 2 - 1, below + column_names - name_width))
        else:
            draw.text((x, below), name, font=label_font, fill=BLACK, anchor="ma")
    draw.text((layout.left + side // 2, below + column_names + 6), "predicted", font=label_font, fill=BLACK, anchor="ma")
    paste_rotated(canvas, "true", label_font, (8, layout.top + side // 2 - text_size("true", label_font)[0] // 2))
    for y in range(side):  # the colour bar: share 1 at the top, 0 at the bottom
        draw.line((bar_x, layout.top + y, bar_x + 13, layout.top + y), fill=shade(1 - y / max(side - 1, 1)))
    draw.text((bar_x + 18, layout.top), "1.0", font=label_font, fill=BLACK, anchor="la")
    draw.text((bar_x + 18, layout.top + side), "0.0", font=label_font, fill=BLACK, anchor="ld")
    caption = "share of the true class"
    if text_size(caption, label_font)[0] <= side:
        paste_rotated(canvas, caption, label_font, (width - line - 8, layout.top + side // 2 - text_size(caption, label_font)[0] // 2), GREY)
    return canvas


def grid_scale(height: int, width: int, max_side: int = 128) -> float:
    """Small images (digits are 8 px) are enlarged to about 64 px, big ones shrunk to at most `max_side`."""
    side = max(height, width)
    if side < 64:
        return float(math.ceil(64 / side))
    return min(1.0, max_side / side)


def image_grid_image(images: np.ndarray, captions: list[str], title: str, columns: int = 8,
                     max_side: int = 128) -> Image.Image:
    """uint8 images (N, C, H, W) in a grid, each above its caption (e.g. 'true 3' / 'pred 8 (0.97)')."""
    caption_font, title_font = font(11), font(14)
    count = len(images)
    title_height = 8 + text_size("Ag", title_font)[1] + 10
    if count == 0:
        width = max(320, 16 + text_size(title, title_font)[0])
        canvas = Image.new("RGB", (width, title_height + 30), WHITE)
        draw = ImageDraw.Draw(canvas)
        draw.text((8, 8), title, font=title_font, fill=BLACK)
        draw.text((8, title_height), "nothing to show", font=caption_font, fill=GREY)
        return canvas
    channels, height, width = images.shape[1:]
    scale = grid_scale(height, width, max_side)
    shown_height, shown_width = max(1, round(height * scale)), max(1, round(width * scale))
    caption_width = max((text_size(c, caption_font)[0] for c in captions), default=0)
    cell_width = max(shown_width, min(caption_width, 220)) + 8
    caption_height = max((text_size(c, caption_font)[1] for c in captions), default=0) + 6
    cell_height = shown_height + caption_height + 8
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    canvas = Image.new("RGB", (max(columns * cell_width, 16 + text_size(title, title_font)[0]),
                               title_height + rows * cell_height), WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 8), title, font=title_font, fill=BLACK)
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    for index, pixels in enumerate(images):
        picture = Image.fromarray(pixels[0] if channels == 1 else pixels[:3].transpose(1, 2, 0)).convert("RGB")
        picture = picture.resize((shown_width, shown_height), resample)
        x = (index % columns) * cell_width + (cell_width - shown_width) // 2
        y = title_height + (index // columns) * cell_height
        canvas.paste(picture, (x, y))
        if index < len(captions):
            draw.multiline_text(((index % columns) * cell_width + cell_width // 2, y + shown_height + 3),
                                captions[index], font=caption_font, fill=BLACK, anchor="ma", align="center")
    return canvas
