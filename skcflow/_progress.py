"""Progress bars that stay silent unless the user asks for them."""

from tqdm.auto import tqdm


def progress(iterable, verbose, **kwargs):
    """Wrap ``iterable`` in a progress bar when ``verbose`` is positive."""
    return tqdm(iterable, disable=not verbose, leave=False, **kwargs)
