// Image files (torch-free). Output: 8-bit PNG with the generation parameters embedded as text chunks, so an
// image can be reproduced from itself, written atomically. Input: PNG and JPEG from users (masks, images to
// edit), decoded defensively (fuzzed: scripts/fuzz.sh image).
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace mmdit {

struct Image {
  int width = 0, height = 0, channels = 3;
  std::vector<uint8_t> pixels;  // row-major, interleaved channels
};

// text: keyword -> value; ASCII values become tEXt chunks, others iTXt (UTF-8).
void write_png(const std::filesystem::path& path, const Image& image,
               const std::map<std::string, std::string>& text = {});
// Encodes to PNG bytes (same chunks) without writing.
std::string encode_png(const Image& image, const std::map<std::string, std::string>& text = {});
// Reads the tEXt/iTXt chunks back (for tests and `mmdit inspect` on images).
std::map<std::string, std::string> read_png_text(const std::filesystem::path& path);

// Limits on images read: a header beyond them is refused before anything is allocated.
constexpr int kMaxImageSide = 16384;
constexpr int64_t kMaxImagePixels = int64_t(64) << 20;  // 64 Mpixel

// Decodes a PNG (any bit depth, palette, interlaced) or JPEG (baseline or progressive) into 8-bit pixels
// with the channels as stored (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA). Throws FileError when the file cannot
// be read, FormatError (one line naming the file) when it is not a PNG or JPEG, is empty, truncated or
// corrupt, or is larger than the limits above.
Image read_image(const std::filesystem::path& path);
// The same on bytes in memory; name is used only in messages.
Image decode_image(const std::string& bytes, const std::string& name);
// Same as read_image (kept for the tests and parity checks, which read PNGs).
Image read_png(const std::filesystem::path& path);

}  // namespace mmdit
