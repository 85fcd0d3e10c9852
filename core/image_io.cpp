#include "core/image_io.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "core/atomic_file.h"
#include "core/errors.h"

// Debian's libstb-dev ships the full single-header sources; compile the parts we use here.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb/stb_image_write.h>
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#include <stb/stb_image.h>

namespace mmdit {
namespace {

uint32_t crc32(const std::string& data) {
  static uint32_t table[256];
  static bool ready = false;
  if (!ready) {
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      table[n] = c;
    }
    ready = true;
  }
  uint32_t c = 0xffffffffu;
  for (unsigned char b : data) c = table[(c ^ b) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

std::string be32(uint32_t v) {
  return {char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)};
}

std::string chunk(const std::string& type, const std::string& body) {
  return be32(uint32_t(body.size())) + type + body + be32(crc32(type + body));
}

bool is_ascii(const std::string& s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

std::string text_chunk(const std::string& key, const std::string& value) {
  // Keywords are 1-79 Latin-1 characters; values of tEXt must be Latin-1, so UTF-8 goes in iTXt
  // (uncompressed, no language tag), as PIL and other generators do.
  std::string k = key.substr(0, 79);
  if (is_ascii(value)) return chunk("tEXt", k + '\0' + value);
  return chunk("iTXt", k + '\0' + '\0' + '\0' + '\0' + '\0' + value);
}

}  // namespace

std::string encode_png(const Image& image, const std::map<std::string, std::string>& text) {
  if (image.width <= 0 || image.height <= 0 || image.channels < 1 || image.channels > 4 ||
      image.pixels.size() != size_t(image.width) * image.height * image.channels)
    throw ShapeError("image of " + std::to_string(image.width) + "x" + std::to_string(image.height) + "x" +
                     std::to_string(image.channels) + " does not match its " + std::to_string(image.pixels.size()) +
                     " bytes");
  int len = 0;
  unsigned char* png = stbi_write_png_to_mem(image.pixels.data(), image.width * image.channels, image.width,
                                             image.height, image.channels, &len);
  if (!png) throw RuntimeFailure("PNG encoding failed");
  std::string bytes(reinterpret_cast<char*>(png), size_t(len));
  STBIW_FREE(png);
  // Insert the text chunks right after IHDR (8-byte signature + 25-byte IHDR chunk).
  std::string chunks;
  for (const auto& [k, v] : text) chunks += text_chunk(k, v);
  bytes.insert(8 + 25, chunks);
  return bytes;
}

void write_png(const std::filesystem::path& path, const Image& image, const std::map<std::string, std::string>& text) {
  atomic_write_bytes(path, encode_png(image, text));
}

std::map<std::string, std::string> read_png_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileError(path.string() + ": cannot open");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 8 || bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) throw FormatError(path.string() + ": not a PNG file");
  std::map<std::string, std::string> out;
  size_t pos = 8;
  while (pos + 12 <= bytes.size()) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data() + pos);
    const uint32_t n = (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
    if (n > bytes.size() - pos - 12) throw FormatError(path.string() + ": truncated PNG chunk");
    const std::string type = bytes.substr(pos + 4, 4);
    const std::string body = bytes.substr(pos + 8, n);
    const size_t z = body.find('\0');
    if (type == "tEXt" && z != std::string::npos) out[body.substr(0, z)] = body.substr(z + 1);
    if (type == "iTXt" && z != std::string::npos) {
      // keyword \0 compression-flag compression-method language \0 translated-keyword \0 text
      size_t lang_end = body.find('\0', z + 3);
      size_t tk_end = lang_end == std::string::npos ? lang_end : body.find('\0', lang_end + 1);
      if (tk_end != std::string::npos && body[z + 1] == 0) out[body.substr(0, z)] = body.substr(tk_end + 1);
    }
    if (type == "IEND") break;
    pos += 12 + n;
  }
  return out;
}

Image read_png(const std::filesystem::path& path) {
  int w = 0, h = 0, c = 0;
  unsigned char* data = stbi_load(path.c_str(), &w, &h, &c, 0);
  if (!data) throw FormatError(path.string() + ": cannot decode PNG (" + stbi_failure_reason() + ")");
  Image img;
  img.width = w;
  img.height = h;
  img.channels = c;
  img.pixels.assign(data, data + size_t(w) * h * c);
  stbi_image_free(data);
  return img;
}

}  // namespace mmdit
