"""Typed errors for problems a user can fix. The CLI prints them as one line and exits with code 2."""


class ArdiffError(ValueError):
    """Base class: bad input, a missing file, an unusable checkpoint. Never a bug in ardiff."""


class VideoError(ArdiffError):
    """A video or frame folder that cannot be read or written."""


class CheckpointError(ArdiffError):
    """A file that is not a valid ardiff checkpoint, or one that does not match what was asked."""


class CheckpointDownloadError(CheckpointError):
    """A checkpoint reference (hf:OWNER/REPO/FILE or a URL) that cannot be fetched or fails its check."""


def one_line(err: BaseException) -> str:
    """An error as one line of text, as the command lines and the apps show it."""
    return " ".join(str(err).split()) or type(err).__name__


class WeightsUnavailableError(ArdiffError):
    """Pretrained weights (the default model, I3D for FVD) that are not on this machine."""


class OutputError(ArdiffError):
    """An output path ardiff will not write: the input itself, a folder holding other files, a bad name."""


class TooLargeError(ArdiffError):
    """A request whose memory or time estimate is beyond reason, refused before anything is allocated."""


class RunError(ArdiffError):
    """A run setting that cannot work (engine.run.RunRequest); `field` names the setting to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
