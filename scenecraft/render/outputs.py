"""Output files, by concern: `scenecraft.render.paths` (layout, safe names, atomic writes),
`scenecraft.render.png` (the PNG encoder and its provenance chunks) and
`scenecraft.render.manifest` (the run manifest, finished images). The names of all three stay
importable from here for code written against the former single module."""

from __future__ import annotations

from scenecraft.render.manifest import Manifest, is_finished
from scenecraft.render.paths import (
    atomic_write,
    atomic_write_text,
    check_out_dir,
    check_unique_paths,
    confined,
    image_path,
    safe_name,
    unwritable,
)
from scenecraft.render.png import (
    METADATA_VERSION,
    PNG_SIGNATURE,
    PngMetadata,
    a1111_parameters,
    decoded,
    encode_png,
    parse_parameters,
    png_size,
    read_png_metadata,
    sha256_bytes_of,
    write_png,
)

__all__ = [
    "METADATA_VERSION",
    "PNG_SIGNATURE",
    "Manifest",
    "PngMetadata",
    "a1111_parameters",
    "atomic_write",
    "atomic_write_text",
    "check_out_dir",
    "check_unique_paths",
    "confined",
    "decoded",
    "encode_png",
    "image_path",
    "is_finished",
    "parse_parameters",
    "png_size",
    "read_png_metadata",
    "safe_name",
    "sha256_bytes_of",
    "unwritable",
    "write_png",
]
