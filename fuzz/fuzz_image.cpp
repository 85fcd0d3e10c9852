// libFuzzer target for the image loader (core/image_io.cpp: stb's PNG and JPEG decoders behind our format,
// size and truncation checks): any byte string must either decode to a consistent image or throw
// FormatError; nothing else (crash, other exception, sanitizer report, leak) is allowed.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/errors.h"
#include "core/image_io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const mmdit::Image img = mmdit::decode_image(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    if (img.width <= 0 || img.height <= 0 || img.channels < 1 || img.channels > 4 ||
        img.pixels.size() != size_t(img.width) * img.height * img.channels)
      std::abort();
  } catch (const mmdit::FormatError&) {
  }
  return 0;
}
