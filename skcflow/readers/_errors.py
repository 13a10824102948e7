"""The error every reader raises for a file it cannot use."""


class UnusableFileError(ValueError):
    """A file that cannot be used as an image: not an image, or undecodable."""
