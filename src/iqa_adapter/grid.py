"""Labelled image grids."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 14


def image_grid(
    images: Sequence[Image.Image],
    columns: int,
    row_labels: Sequence[str] = (),
    column_labels: Sequence[str] = (),
    min_cell: int = 128,
) -> Image.Image:
    """Tile ``images`` row by row, ``columns`` per row, with optional labels above columns and rows.

    Cells smaller than ``min_cell`` pixels are enlarged with nearest-neighbour sampling so that tiny
    images stay visible and unsmoothed.
    """
    if not images:
        raise ValueError("no images to put in a grid")
    rows = -(-len(images) // columns)
    width, height = images[0].size
    factor = max(1, -(-min_cell // max(width, height)))
    cell_w, cell_h = width * factor, height * factor
    top = LABEL_HEIGHT if column_labels else 0
    row_label_h = LABEL_HEIGHT if row_labels else 0
    grid = Image.new("RGB", (columns * cell_w, top + rows * (cell_h + row_label_h)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for column, label in enumerate(column_labels):
        draw.text((column * cell_w + 2, 1), label, fill="black", font=font)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        y = top + row * (cell_h + row_label_h)
        if column == 0 and row < len(row_labels):
            draw.text((2, y + 1), row_labels[row], fill="black", font=font)
        grid.paste(image.convert("RGB").resize((cell_w, cell_h), Image.NEAREST), (column * cell_w, y + row_label_h))
    return grid
