"""Figures from what a task describes (imgrec.tasks.base FigureSpecs): drawn as PNG files, or sent to a
logger (TensorBoard). Confusion matrices and image grids are drawn with Pillow (evaluation.rasters),
PR-curve plots with matplotlib (evaluation.plots), PR curves for TensorBoard in its own format."""

from pathlib import Path

from imgrec.tasks.base import (ConfusionMatrixFigure, CurvesPlotFigure, ImageGridFigure, PRCurveFigure, PRPlotFigure,
                               ROCPlotFigure)


def picture(spec):
    """A Pillow image of a confusion matrix, an image grid or a ROC plot."""
    from imgrec.evaluation.rasters import confusion_matrix_image, image_grid_image

    if isinstance(spec, ConfusionMatrixFigure):
        return confusion_matrix_image(spec.counts, spec.class_names, spec.title)
    if isinstance(spec, ImageGridFigure):
        return image_grid_image(spec.images, spec.captions, spec.title, spec.columns, spec.max_side)
    if isinstance(spec, ROCPlotFigure):
        from imgrec.evaluation.plots import figure_picture, roc_figure

        return figure_picture(roc_figure(spec.genuine, spec.impostor, spec.marked, spec.title))
    if isinstance(spec, CurvesPlotFigure):
        from imgrec.evaluation.plots import curves_figure, figure_picture

        return figure_picture(curves_figure(spec.curves, spec.title, spec.x_label, spec.y_label))
    raise TypeError(f"{type(spec).__name__} is not drawn as a picture")


def to_logger(logger, spec, step: int) -> None:
    if isinstance(spec, PRCurveFigure):
        logger.log_pr_curve(spec.tag, spec.positives, spec.scores, step)
    elif isinstance(spec, PRPlotFigure):
        raise TypeError("PR-curve plots are written as files; TensorBoard takes PRCurveFigure")
    else:
        logger.log_image(spec.tag, picture(spec), step)


def to_file(spec, folder: Path) -> Path:
    """`<folder>/<tag>.png`."""
    path = Path(folder) / f"{spec.tag.replace('/', '_')}.png"
    if isinstance(spec, PRPlotFigure):
        from imgrec.evaluation.plots import pr_curves_figure, save_figure

        save_figure(pr_curves_figure(spec.probabilities, spec.labels, spec.class_names, spec.marked), path)
    elif isinstance(spec, ROCPlotFigure):
        from imgrec.evaluation.plots import roc_figure, save_figure

        save_figure(roc_figure(spec.genuine, spec.impostor, spec.marked, spec.title), path)
    elif isinstance(spec, CurvesPlotFigure):
        from imgrec.evaluation.plots import curves_figure, save_figure

        save_figure(curves_figure(spec.curves, spec.title, spec.x_label, spec.y_label), path)
    else:
        picture(spec).save(path)
    return path
