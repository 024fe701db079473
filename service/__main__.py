"""``python -m service``: run the inference service with uvicorn.

Every setting is an option (``--models-dir``, ``--port``, ...) overriding its ``SERVE_*``
environment variable; tokens are taken from the environment only, to keep them out of ``ps``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from service.allocator import fix_mmap_threshold
from service.settings import Settings

SECRET_FIELDS = frozenset({"auth_token", "admin_token"})


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """One option per setting, generated from :class:`Settings` so the two never drift apart."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the ResNet ONNX models of a directory over HTTP (API docs at /docs).",
        epilog="Environment only: "
        + ", ".join(f"SERVE_{name.upper()}" for name in sorted(SECRET_FIELDS))
        + ". Options override the SERVE_* environment variables.",
    )
    for name, field in Settings.model_fields.items():
        if name in SECRET_FIELDS:
            continue
        env = f"SERVE_{name.upper()}"
        default = field.default
        help_text = f"{field.description} [env {env}; default {default}]"
        if field.annotation is bool:
            parser.add_argument(
                _option(name), action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(
                _option(name), dest=name, default=None, metavar=name.split("_")[-1].upper(), help=help_text
            )
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment, overridden by the options given in ``argv``."""
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(argv)
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return 2
    fix_mmap_threshold()  # before the first large allocation: see service/allocator.py
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from service.app import create_app  # after logging is configured
    from service.server import serve

    app = create_app(settings)
    serve(app, settings, app.state.service.metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
