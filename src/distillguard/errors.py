"""The one exception type that means "the user gave us something we cannot use".

The CLI turns it into a single line on stderr and a non-zero exit; everything else is a bug.
"""


class UserError(Exception):
    """Bad input: a missing file, malformed JSONL, an unknown scheme, an unusable model directory."""


class DefenceUnavailable(UserError):
    """A sampling defence that cannot be built for this model as configured (anti-distillation sampling
    without a proxy student): the gateway serves the tier without it and says so at start-up."""
