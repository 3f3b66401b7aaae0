"""One image through a model before any training or inference: size mistakes named up front."""

from omegaconf import DictConfig

from imgrec.errors import ImgrecError


def check_model_fits(model, model_cfg: DictConfig, input_shape: list[int], device):
    """One image through the model before training: a network that shrinks the image to nothing fails here
    with the sizes named instead of inside the first step. Returns the output, for the task to check."""
    import torch

    was_training = model.training
    model.eval()  # batch norm in eval mode takes one image and leaves its running statistics alone
    try:
        with torch.no_grad():
            output = model(torch.zeros(1, *input_shape, device=device))
    except RuntimeError as error:
        raise ImgrecError(
            f"model={model_cfg._target_.rsplit('.', 1)[-1]} cannot take {input_shape[1]}x{input_shape[2]} images with "
            f"{input_shape[0]} channel(s): {str(error).splitlines()[0]}. Raise dataset.image_size, or use fewer "
            "stages / stride 1 / padding same (small_cnn), or model.small_input=true (torchvision backbones)"
        ) from error
    finally:
        model.train(was_training)
    return output
