// libFuzzer target for the safetensors header parser: any byte string must either parse or throw
// FormatError; nothing else (crash, other exception, sanitizer report) is allowed. When it parses,
// every span must lie inside the input.
#include <cstdint>
#include <cstdlib>

#include "core/errors.h"
#include "core/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto h = mmdit::parse_safetensors(data, size, "fuzz");
    for (const auto& t : h.tensors)
      if (h.data_offset + t.end > size || t.begin > t.end) std::abort();
  } catch (const mmdit::FormatError&) {
  }
  return 0;
}
