"""The one exception type for user mistakes.

The CLI prints a `FashionNetError` as a single line and exits 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class FashionNetError(Exception):
    """A problem with the user's input: a file, a folder, a config value, a flag."""
