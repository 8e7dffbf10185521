"""The loading error shared by our own checkpoints and the official formats (callers catch one class)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is; the message names the file, the keys and the fix."""
