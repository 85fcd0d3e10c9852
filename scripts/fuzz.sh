#!/usr/bin/env bash
# Builds the libFuzzer target for the safetensors header parser with ASan+UBSan (clang from Debian)
# and runs it. Seeds: the malformed corpus of tests/corpus/bad plus valid files; new interesting
# inputs are kept in fuzz/corpus (merged, minimised), crashes in fuzz/crashes.
#   scripts/fuzz.sh [SECONDS]   (default 600)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-600}
command -v clang++ >/dev/null || { sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo; $sudo apt-get install -y -qq clang; }
mkdir -p build-fuzz fuzz/corpus fuzz/crashes
clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. \
  core/safetensors_header.cpp fuzz/fuzz_safetensors.cpp -o build-fuzz/fuzz_safetensors
seeds=build-fuzz/seeds; rm -rf "$seeds"; mkdir -p "$seeds"
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
echo "fuzzing for ${SECONDS_TO_RUN}s"
./build-fuzz/fuzz_safetensors fuzz/corpus "$seeds" -max_total_time="$SECONDS_TO_RUN" -max_len=4096 \
  -artifact_prefix=fuzz/crashes/ -print_final_stats=1 2>&1 | tee build-fuzz/fuzz.log | grep -E "^#[0-9]+ *(DONE|pulse)|stat::|ERROR|SUMMARY" || true
# Keep the corpus small: merge into a minimal set that covers the same edges.
mkdir -p build-fuzz/min && ./build-fuzz/fuzz_safetensors -merge=1 build-fuzz/min fuzz/corpus >/dev/null 2>&1
rm -rf fuzz/corpus && mv build-fuzz/min fuzz/corpus
echo "corpus: $(ls fuzz/corpus | wc -l) inputs; crashes: $(ls fuzz/crashes | wc -l)"
