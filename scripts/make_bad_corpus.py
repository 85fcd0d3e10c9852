#!/usr/bin/env python3
"""Writes tests/corpus/bad/: malformed safetensors files and model folders. Each must make
`mmdit inspect` exit 2 with one line on stderr (tests/CMakeLists.txt runs them all).

    python3 scripts/make_bad_corpus.py tests/corpus/bad
"""
import json
import pathlib
import shutil
import struct
import sys


def st(header, data=b"", length=None):
    """A safetensors image: u64 header length, JSON header, data."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(h) if length is None else length
    return struct.pack("<Q", n) + h + data


def f32(name, shape, begin):
    n = 4
    for d in shape:
        n *= d
    return {name: {"dtype": "F32", "shape": shape, "data_offsets": [begin, begin + n]}}


FILES = {
    "empty.safetensors": b"",
    "short.safetensors": b"\x05\x00\x00",
    "huge_header_length.safetensors": struct.pack("<Q", 1 << 40) + b"{}",
    "header_past_end.safetensors": st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, length=4096),
    "header_one_byte.safetensors": st(b"{", length=1),
    "bad_json.safetensors": st(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]', b"\0" * 4),
    "json_not_object.safetensors": st([1, 2, 3]),
    "entry_not_object.safetensors": st({"a": [1, 2]}),
    "unknown_dtype.safetensors": st({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16),
    "dtype_not_string.safetensors": st({"a": {"dtype": 7, "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "missing_offsets.safetensors": st({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4),
    "span_outside_file.safetensors": st(f32("a", [4], 0) | f32("b", [4], 16), b"\0" * 20),
    "truncated_data.safetensors": st(f32("a", [64, 64], 0), b"\0" * 100),
    "overlapping_spans.safetensors": st(f32("a", [4], 0) | f32("b", [4], 8), b"\0" * 32),
    "shape_size_mismatch.safetensors": st({"a": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 32]}}, b"\0" * 32),
    "negative_dim.safetensors": st({"a": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}, b"\0" * 16),
    "shape_overflow.safetensors": st({"a": {"dtype": "F64", "shape": [1 << 31, 1 << 31, 1 << 3], "data_offsets": [0, 0]}}),
    "offsets_reversed.safetensors": st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, b"\0" * 8),
    "three_offsets.safetensors": st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, b"\0" * 8),
    "metadata_not_object.safetensors": st({"__metadata__": "x"} | f32("a", [1], 0), b"\0" * 4),
    "not_safetensors.txt": b"This is a text file, not a checkpoint.\n" * 4,
}

# Folders: (relative path -> bytes).
FOLDERS = {
    "folder_without_model_index": {"notes.txt": b"no model_index.json or config.json here\n"},
    "model_index_bad_json": {"model_index.json": b'{"_class_name": "StableDiffusion3Pipeline", '},
    "model_index_missing_component": {
        "model_index.json": json.dumps({"_class_name": "StableDiffusion3Pipeline",
                                        "transformer": ["diffusers", "SD3Transformer2DModel"]}).encode()},
    "index_without_weight_map": {
        "config.json": json.dumps({"_class_name": "SD3Transformer2DModel", "_diffusers_version": "0.42.1"}).encode(),
        "diffusion_pytorch_model.safetensors.index.json": json.dumps({"metadata": {}}).encode()},
    "index_names_absent_tensor": {
        "config.json": json.dumps({"_class_name": "SD3Transformer2DModel", "_diffusers_version": "0.42.1"}).encode(),
        "diffusion_pytorch_model.safetensors.index.json": json.dumps(
            {"weight_map": {"a": "shard.safetensors", "b": "shard.safetensors"}}).encode(),
        "shard.safetensors": st(f32("a", [1], 0), b"\0" * 4)},
    "component_with_bad_shard": {
        "config.json": json.dumps({"_class_name": "AutoencoderKL", "_diffusers_version": "0.42.1"}).encode(),
        "diffusion_pytorch_model.safetensors": st(f32("a", [4], 0) | f32("b", [4], 8), b"\0" * 32)},
}


def main():
    out = pathlib.Path(sys.argv[1])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name, data in FILES.items():
        (out / name).write_bytes(data)
    for folder, files in FOLDERS.items():
        for rel, data in files.items():
            p = out / folder / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    print(f"{len(FILES)} files and {len(FOLDERS)} folders in {out}")


if __name__ == "__main__":
    main()
