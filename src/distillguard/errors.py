"""The one exception type that means "the user gave us something we cannot use".

The CLI turns it into a single line on stderr and a non-zero exit; everything else is a bug.
"""


class UserError(Exception):
    """Bad input: a missing file, malformed JSONL, an unknown scheme, an unusable model directory."""
