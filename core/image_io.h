// Image output (torch-free): 8-bit PNG with the generation parameters embedded as text chunks, so an
// image can be reproduced from itself. Written atomically.
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
// Decodes a PNG into 8-bit pixels (for tests and parity checks).
Image read_png(const std::filesystem::path& path);

}  // namespace mmdit
