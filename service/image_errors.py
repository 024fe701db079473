"""The error an unusable image raises, free of HTTP.

Preprocessing raises subclasses of :class:`ImageError` (``service.errors.InvalidImage`` and ``ImageTooLarge``,
which the service answers with 400 and 413); the offline evaluator catches the base class and skips the image.
"""

from __future__ import annotations


class ImageError(ValueError):
    """The image cannot be classified (empty, corrupt, unknown format, too large); the message says why."""
