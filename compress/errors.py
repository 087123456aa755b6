"""The exceptions that stand for user mistakes.

Every error a user can cause by what they pass (a wrong path, a model we do not support, a broken
file) is a `CompressError`. The CLI prints its message on one line and exits with code 2; anything
else is a bug: one line naming the log file that holds its traceback, exit code 3 (see
`compress.cli` for every exit status).
"""


class CompressError(Exception):
    """A problem with the user's input; the message says what was wrong and what to do."""


class ModelNotFoundError(CompressError):
    """`--model` names neither a local directory, the demo, nor a reachable Hub repository."""


class UnsupportedModelError(CompressError):
    """The model is dense, or its MoE architecture has no family adapter."""


class CheckpointError(CompressError):
    """A checkpoint on disk is missing files, truncated, or laid out in a way we cannot read."""


class OutputExistsError(CompressError):
    """The output directory exists and `--overwrite` was not given."""


class DataError(CompressError):
    """Calibration or evaluation data could not be found or read."""
