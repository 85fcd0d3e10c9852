#include "core/image_io.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/atomic_file.h"
#include "core/errors.h"

// stb allocates through these while decoding. Each allocation is capped by what the header being decoded can
// need (decode_image sets the cap), so a small hostile file cannot make stb allocate gigabytes (a zlib bomb in
// a PNG's IDAT, a huge header); stb then fails with "outofmem". And zeroed: stb 2.27 reads the quantisation
// and Huffman tables a hostile JPEG never defines from fresh memory.
namespace {
thread_local size_t stbi_alloc_cap = SIZE_MAX;
void* capped_malloc(size_t n) { return n > stbi_alloc_cap ? nullptr : std::calloc(1, n); }
void* capped_realloc(void* p, size_t n) { return n > stbi_alloc_cap ? nullptr : std::realloc(p, n); }
}  // namespace

// Debian's libstb-dev ships the full single-header sources; compile the parts we use here.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb/stb_image_write.h>
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_NO_STDIO  // files are read by read_image, stb decodes memory only
#define STBI_MAX_DIMENSIONS 16384  // = kMaxImageSide (checked below); stb's own backstop
#define STBI_MALLOC(n) capped_malloc(n)
#define STBI_REALLOC(p, n) capped_realloc(p, n)
#define STBI_FREE(p) std::free(p)
// stb's JPEG decoder lets a hostile file overflow int in its DC prediction (dc * dequant, nothings/stb#1533,
// open upstream; harmless: garbage pixels), so the fuzzer's UBSan (clang) skips the signed-overflow check in
// stb's functions, and only there (ASan and the other checks stay on).
#ifdef __clang__
#pragma clang attribute push(__attribute__((no_sanitize("signed-integer-overflow"))), apply_to = function)
#endif
#include <stb/stb_image.h>
#ifdef __clang__
#pragma clang attribute pop
#endif
static_assert(STBI_MAX_DIMENSIONS == mmdit::kMaxImageSide);

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

namespace {

constexpr uint64_t kMaxImageFileBytes = uint64_t(1) << 30;  // stb takes an int length; 1 GiB is ample

bool starts_with(const std::string& b, size_t at, const char* magic, size_t n) {
  return b.size() >= at + n && std::memcmp(b.data() + at, magic, n) == 0;
}

// For the refusal of other formats: what the bytes look like, if it is a common image format.
std::string looks_like(const std::string& b) {
  if (starts_with(b, 0, "GIF8", 4)) return "GIF";
  if (starts_with(b, 0, "RIFF", 4) && starts_with(b, 8, "WEBP", 4)) return "WebP";
  if (starts_with(b, 0, "BM", 2)) return "BMP";
  if (starts_with(b, 0, "II*\0", 4) || starts_with(b, 0, "MM\0*", 4)) return "TIFF";
  if (starts_with(b, 4, "ftyp", 4)) return "HEIF/AVIF";
  return "";
}

uint32_t be32_at(const unsigned char* p) { return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3]; }

// The checks stb lacks, done on the file's structure before stb sees it. A missing end marker: stb pads a
// cut JPEG scan with zeros and returns a partly grey image, so a file that ends early is refused, as Pillow
// does. An empty string when the structure is sound.
std::string png_problem(const unsigned char* p, size_t n) {
  size_t pos = 8;  // after the signature
  while (pos + 12 <= n) {
    const uint32_t len = be32_at(p + pos);
    if (len > n - pos - 12) break;
    if (std::memcmp(p + pos + 4, "IEND", 4) == 0) return "";
    pos += 12 + size_t(len);
  }
  return "truncated PNG (the file ends before its IEND chunk)";
}

// Also every Huffman table: stb 2.27 (Debian's) builds a table of more than 256 codes past its arrays.
std::string jpeg_problem(const unsigned char* p, size_t n) {
  size_t i = 2;  // after SOI
  while (i + 1 < n) {
    if (p[i] != 0xFF) {  // entropy-coded data of a scan (or garbage, which stb refuses)
      ++i;
      continue;
    }
    const unsigned char m = p[i + 1];
    if (m == 0xD9) return "";  // EOI
    // Stuffed 0xFF00, fill bytes, restart markers, TEM and SOI stand alone; other markers carry a length.
    if (m == 0x00 || m == 0xFF || m == 0x01 || m == 0xD8 || (m >= 0xD0 && m <= 0xD7)) {
      ++i;
      continue;
    }
    if (i + 4 > n) break;
    const size_t len = (size_t(p[i + 2]) << 8) | p[i + 3];
    if (m == 0xC4) {  // DHT: tables of (class/id, 16 counts, symbols), read as stb does (zeros past the end)
      for (size_t t = i + 4, end = i + 2 + len; t < end;) {
        size_t codes = 0;
        for (size_t k = t + 1; k < t + 17; ++k) codes += k < n ? p[k] : 0;
        if (codes > 256) return "corrupt JPEG (a Huffman table of " + std::to_string(codes) + " codes, at most 256)";
        t += 17 + codes;
      }
    }
    i += 2 + len;
  }
  return "truncated JPEG (the file ends before its end-of-image marker)";
}

// Restores the allocation cap when a decode ends, however it ends.
struct AllocCap {
  explicit AllocCap(size_t cap) { stbi_alloc_cap = cap; }
  ~AllocCap() { stbi_alloc_cap = SIZE_MAX; }
};

}  // namespace

Image decode_image(const std::string& bytes, const std::string& name) {
  if (bytes.empty()) throw FormatError(name + ": empty file, expected a PNG or JPEG image");
  const bool png = starts_with(bytes, 0, "\x89PNG\r\n\x1a\n", 8);
  const bool jpeg = starts_with(bytes, 0, "\xFF\xD8\xFF", 3);
  if (!png && !jpeg) {
    const std::string other = looks_like(bytes);
    throw FormatError(name + ": not a PNG or JPEG image (" + (other.empty() ? "" : "it looks like " + other + "; ") +
                      "only PNG and JPEG are accepted)");
  }
  const std::string kind = png ? "PNG" : "JPEG";
  if (bytes.size() > kMaxImageFileBytes)
    throw FormatError(name + ": " + kind + " file is too large (over 1 GiB)");
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int len = int(bytes.size());

  if (const std::string problem = png ? png_problem(data, bytes.size()) : jpeg_problem(data, bytes.size());
      !problem.empty())
    throw FormatError(name + ": " + problem);
  // The header alone next: refuse huge dimensions before stb allocates anything for the pixels. (stb's own
  // format-specific readers: stbi_info_from_memory would try every format and report only the last failure.)
  const std::string limits = "(the limit is " + std::to_string(kMaxImageSide) + " pixels a side and " +
                             std::to_string(kMaxImagePixels >> 20) + " Mpixel)";
  const auto too_large = [&](int64_t w, int64_t h) {
    return FormatError(name + ": " + kind + " image of " + std::to_string(w) + "x" + std::to_string(h) +
                       " is too large " + limits);
  };
  if (png && bytes.size() >= 24 && bytes.compare(12, 4, "IHDR") == 0) {  // stb refuses these itself, without the size
    const uint32_t iw = be32_at(data + 16), ih = be32_at(data + 20);
    if (iw > uint32_t(kMaxImageSide) || ih > uint32_t(kMaxImageSide)) throw too_large(iw, ih);
  }
  int w = 0, h = 0, c = 0;
  {
    AllocCap cap(size_t(1) << 20);  // header parsing needs a few KiB
    stbi__context ctx;
    stbi__start_mem(&ctx, data, len);
    stbi__g_failure_reason = nullptr;
    if (!(png ? stbi__png_info(&ctx, &w, &h, &c) : stbi__jpeg_info(&ctx, &w, &h, &c))) {
      const std::string why = stbi__g_failure_reason ? stbi__g_failure_reason : "undecodable header";
      if (why == "too large") throw FormatError(name + ": " + kind + " image is too large " + limits);
      throw FormatError(name + ": corrupt " + kind + " header (" + why + ")");
    }
  }
  if (w <= 0 || h <= 0 || w > kMaxImageSide || h > kMaxImageSide || int64_t(w) * h > kMaxImagePixels)
    throw too_large(w, h);
  // A JPEG that stb decodes (Huffman-coded) spends one bit at least on every 8x8 block of its full-size
  // component, so a smaller file lost its data: stb would decode zeros, and a few bytes claiming 64 Mpixel
  // would take seconds. This also bounds the decoding work by the file's size.
  const int64_t blocks = int64_t(w + 7) / 8 * ((h + 7) / 8);
  if (jpeg && int64_t(bytes.size()) * 8 < blocks)
    throw FormatError(name + ": truncated JPEG (" + std::to_string(bytes.size()) + " bytes cannot hold a " +
                      std::to_string(w) + "x" + std::to_string(h) + " image)");

  // Every buffer stb needs for a w x h image (16-bit PNG rows with filter bytes, JPEG planes padded to
  // 32-pixel blocks as 16-bit coefficients, a doubling zlib buffer) fits in this.
  unsigned char* pixels = nullptr;
  int dw = 0, dh = 0, dc = 0;
  {
    AllocCap cap(2 * (size_t(w) + 32) * (size_t(h) + 32) * 8 + (size_t(1) << 20));
    stbi__g_failure_reason = nullptr;
    pixels = stbi_load_from_memory(data, len, &dw, &dh, &dc, 0);
  }
  if (!pixels) {
    // stb tries PNG first, so a JPEG it fails on without a reason of its own still says "bad png sig".
    std::string why = stbi__g_failure_reason ? stbi__g_failure_reason : "";
    if (why.empty() || (jpeg && why == "bad png sig")) why = "undecodable data";
    if (why == "outofmem")
      throw FormatError(name + ": corrupt " + kind + " (its data is far larger than a " + std::to_string(w) + "x" +
                        std::to_string(h) + " image needs)");
    throw FormatError(name + ": corrupt " + kind + " (" + why + ")");
  }
  Image img;
  img.width = dw;
  img.height = dh;
  img.channels = dc;
  const bool ok = dw == w && dh == h && dc >= 1 && dc <= 4;
  if (ok) img.pixels.assign(pixels, pixels + size_t(dw) * dh * dc);
  stbi_image_free(pixels);
  if (!ok) throw FormatError(name + ": corrupt " + kind + " (decoded size differs from its header)");
  return img;
}

Image read_image(const std::filesystem::path& path) {
  const std::string name = path.string();
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw FileError(name + ": cannot read (" + std::strerror(errno) + ")");
  std::string bytes;
  char buf[1 << 16];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0 && bytes.size() <= kMaxImageFileBytes) bytes.append(buf, n);
  const int err = std::ferror(f) ? errno : 0;
  std::fclose(f);
  if (err) throw FileError(name + ": cannot read (" + std::strerror(err) + ")");
  return decode_image(bytes, name);
}

Image read_png(const std::filesystem::path& path) { return read_image(path); }

}  // namespace mmdit
