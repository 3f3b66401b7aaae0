import numpy as np

from imgrec.evaluation.rasters import (BLUES, confusion_matrix_image, font, grid_scale, image_grid_image,
                                   matrix_layout)


def cell_corner(image, layout, row, column):
    """The colour one pixel inside a cell's top-left corner (the count is written in its centre)."""
    return image.getpixel((layout.left + column * layout.cell + 2, layout.top + row * layout.cell + 2))


def test_confusion_matrix_cells_are_coloured_by_the_share_of_their_true_class():
    counts = np.array([[10, 0, 0], [0, 5, 5], [0, 0, 7]])
    names = ["cat", "dog", "bird"]
    image = confusion_matrix_image(counts, names, "val")
    layout = matrix_layout(counts, names, font(12), font(14))
    assert layout.numbers and not layout.rotate_columns
    assert cell_corner(image, layout, 0, 0) == tuple(BLUES[-1])  # 10 of 10: the darkest blue
    assert cell_corner(image, layout, 0, 1) == tuple(BLUES[0])  # 0 of 10: the lightest
    assert cell_corner(image, layout, 1, 1) == cell_corner(image, layout, 1, 2) == tuple(BLUES[2])  # half each
    # the image holds the whole matrix: the last cell, then the colour bar to its right
    assert image.width > layout.left + 3 * layout.cell and image.height > layout.top + 3 * layout.cell


def test_confusion_matrix_of_many_long_named_classes_drops_the_numbers_and_turns_the_names():
    classes = 40
    names = [f"a rather long class name {i}" for i in range(classes)]
    counts = np.eye(classes, dtype=int) * 3
    image = confusion_matrix_image(counts, names, "val")
    layout = matrix_layout(counts, names, font(12), font(14))
    assert not layout.numbers and layout.rotate_columns
    assert cell_corner(image, layout, classes - 1, classes - 1) == tuple(BLUES[-1])
    assert image.width < 2000 and image.height < 2000  # cells shrink to keep the picture readable in TensorBoard


def test_image_grid_shows_every_image_enlarged_with_its_caption():
    colours = [(37, 201, 90), (200, 30, 120)]  # not greys, which anti-aliased black text is made of
    images = np.stack([np.broadcast_to(np.array(c, np.uint8)[:, None, None], (3, 8, 8)) for c in colours])
    image = np.asarray(image_grid_image(images, ["true 1\npred 2 (0.90)", "true 3\npred 4 (0.80)"], "errors"))
    scale = int(grid_scale(8, 8))
    assert scale == 8  # 8 px digits drawn 64 px wide
    for colour in colours:  # each image appears whole, once, at the enlarged size
        assert (image == colour).all(axis=2).sum() == (8 * scale) ** 2
    assert grid_scale(224, 224) == 128 / 224 and grid_scale(100, 60) == 1.0


def test_image_grid_with_nothing_to_show_is_still_an_image():
    image = image_grid_image(np.zeros((0, 1, 8, 8), np.uint8), [], "most confident errors (0 shown)")
    assert image.width >= 320 and image.height > 30
