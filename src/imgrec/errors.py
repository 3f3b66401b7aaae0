"""The one exception type users see: a bad value, named, with how to fix it."""


class ImgrecError(ValueError):
    """Raised for bad configuration or input, before any training work is lost.

    The entry points print its message without a traceback and exit with status 2.
    """
