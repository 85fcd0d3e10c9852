#!/usr/bin/env bash
# Builds a libFuzzer target with ASan+UBSan (clang from Debian) and runs it; new interesting inputs are kept
# in its corpus (merged, minimised), crashes in fuzz/crashes/TARGET-*. Both corpora are replayed by tests.
#   scripts/fuzz.sh [safetensors|image] [SECONDS]   (default: safetensors, 600 s)
#   safetensors: the safetensors header parser; seeds: tests/corpus/bad plus a valid file; corpus fuzz/corpus
#   image:       the PNG/JPEG loader (core/image_io.cpp); seeds: scripts/fuzz_image_seeds.py; fuzz/corpus-image
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=safetensors
case "${1:-}" in safetensors | image) TARGET=$1; shift ;; esac
SECONDS_TO_RUN=${1:-600}
command -v clang++ >/dev/null || { sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo; $sudo apt-get install -y -qq clang; }
seeds=build-fuzz/seeds-$TARGET; rm -rf "$seeds"; mkdir -p "$seeds" fuzz/crashes
build() { clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. "$@"; }
if [ "$TARGET" = image ]; then
  corpus=fuzz/corpus-image max_len=4096
  build core/image_io.cpp core/atomic_file.cpp fuzz/fuzz_image.cpp -o build-fuzz/fuzz_image
  py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
  $py scripts/fuzz_image_seeds.py "$seeds"
else
  corpus=fuzz/corpus max_len=4096
  build core/safetensors_header.cpp fuzz/fuzz_safetensors.cpp -o build-fuzz/fuzz_safetensors
  find tests/corpus/bad -type f -name '*.safetensors' -exec cp {} "$seeds/" \;
  python3 - "$seeds" <<'PY'
import json, struct, sys, pathlib
d = pathlib.Path(sys.argv[1])
h = json.dumps({"__metadata__": {"format": "pt"},
                "a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
                "b": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [12, 16]},
                "c": {"dtype": "BOOL", "shape": [], "data_offsets": [16, 17]}}).encode()
(d / "valid.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + bytes(17))
PY
fi
mkdir -p "$corpus"
echo "fuzzing $TARGET for ${SECONDS_TO_RUN}s"
./build-fuzz/fuzz_$TARGET "$corpus" "$seeds" -max_total_time="$SECONDS_TO_RUN" -max_len=$max_len \
  -artifact_prefix=fuzz/crashes/$TARGET- -print_final_stats=1 2>&1 | tee build-fuzz/fuzz-$TARGET.log |
  grep -E "^#[0-9]+ *(DONE|pulse)|stat::|ERROR|SUMMARY" || true
# Keep the corpus small: merge into a minimal set that covers the same edges.
rm -rf build-fuzz/min && mkdir -p build-fuzz/min && ./build-fuzz/fuzz_$TARGET -merge=1 build-fuzz/min "$corpus" "$seeds" >/dev/null 2>&1
rm -rf "$corpus" && mv build-fuzz/min "$corpus"
echo "corpus: $(ls "$corpus" | wc -l) inputs, $(du -sh --apparent-size "$corpus" | cut -f1); crashes: $(ls fuzz/crashes | grep -c "^$TARGET-" || true)"
