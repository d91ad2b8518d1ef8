"""Turning what the user logs into bytes, on the caller's thread (so a bad value is an
error at the caller's line, and a figure is saved as it is now, not as it is later)."""

from __future__ import annotations

import io
import json
import posixpath
from typing import Any


def text_bytes(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"log_text takes a str, got {type(text).__name__}")
    return text.encode("utf-8")


def dict_bytes(dictionary: object, artifact_file: str) -> bytes:
    """YAML for a ``.yaml``/``.yml`` file, else JSON (MLflow's rule for ``log_dict``)."""
    if posixpath.splitext(artifact_file)[1].lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_dump(dictionary, default_flow_style=False, sort_keys=False,
                                  allow_unicode=True).encode("utf-8")
        except yaml.YAMLError as exc:
            raise TypeError(f"log_dict cannot write this value as YAML: {exc}") from None
    try:
        return json.dumps(dictionary, indent=2, allow_nan=True).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"log_dict cannot write this value as JSON: {exc}") from None


def figure_bytes(figure: Any, artifact_file: str, save_kwargs: dict | None = None) -> bytes:
    """A matplotlib figure saved in the format its extension names (``.png``, ``.svg``,
    ``.pdf``…); a plotly figure as ``.html`` or ``.json`` (or an image format, where
    kaleido is installed)."""
    extension = posixpath.splitext(artifact_file)[1].lower().lstrip(".")
    if not extension:
        raise ValueError(f"artifact_file must have an extension that names the format, got {artifact_file!r}")
    module = type(figure).__module__
    if module.startswith("matplotlib"):
        buffer = io.BytesIO()
        try:
            figure.savefig(buffer, format=extension, **(save_kwargs or {}))
        except ValueError as exc:  # an unknown format
            raise ValueError(f"matplotlib cannot save {artifact_file!r}: {exc}") from None
        return buffer.getvalue()
    if module.startswith("plotly"):
        if extension == "html":
            return figure.to_html(include_plotlyjs="cdn", **(save_kwargs or {})).encode("utf-8")
        if extension == "json":
            return figure.to_json().encode("utf-8")
        return figure.to_image(format=extension, **(save_kwargs or {}))
    raise TypeError(f"log_figure takes a matplotlib or plotly figure, got {type(figure).__name__}")


def reference_bytes(uri: str, name: str, sha256: str | None, size: int | None) -> bytes:
    record = {"uri": uri, "name": name, "sha256": sha256, "size": size}
    return json.dumps({key: value for key, value in record.items() if value is not None},
                      indent=2).encode("utf-8")
