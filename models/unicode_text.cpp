#include "models/unicode_text.h"

#include <algorithm>

namespace mmdit::unicode {
namespace {

struct ClassRange {
  uint32_t first, last, value;
};
struct LowerRun {
  uint32_t first, last, step, delta;  // delta as uint32 two's complement
};
struct Decomp {
  uint32_t a, b, c;
};

#include "models/unicode_tables.inc"

template <typename T, size_t N>
const T* find_range(const T (&table)[N], char32_t c) {
  auto it = std::upper_bound(std::begin(table), std::end(table), static_cast<uint32_t>(c),
                             [](uint32_t v, const T& r) { return v < r.first; });
  if (it == std::begin(table)) return nullptr;
  --it;
  return c <= it->last ? &*it : nullptr;
}

uint32_t class_bits(char32_t c) {
  if (c < 0x80) {
    if (c == ' ' || (c >= 9 && c <= 13)) return 4;
    if (c >= '0' && c <= '9') return 2;
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return 1;
    return 0;
  }
  const ClassRange* r = find_range(kClassRanges, c);
  return r ? r->value : 0;
}

int combining_class(char32_t c) {
  if (c < 0x300) return 0;
  const ClassRange* r = find_range(kCombiningClass, c);
  return r ? static_cast<int>(r->value) : 0;
}

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

void decompose(char32_t c, std::u32string& out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const int s = static_cast<int>(c - kSBase);
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (c >= 0xC0) {
    auto it = std::lower_bound(std::begin(kDecomposition), std::end(kDecomposition), static_cast<uint32_t>(c),
                               [](const Decomp& d, uint32_t v) { return d.a < v; });
    if (it != std::end(kDecomposition) && it->a == c) {
      decompose(it->b, out);
      if (it->c) decompose(it->c, out);
      return;
    }
  }
  out.push_back(c);
}

char32_t compose_pair(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  auto it = std::lower_bound(std::begin(kComposition), std::end(kComposition), std::make_pair(a, b),
                             [](const Decomp& d, const std::pair<char32_t, char32_t>& v) {
                               return d.a != v.first ? d.a < v.first : d.b < v.second;
                             });
  if (it != std::end(kComposition) && it->a == a && it->b == b) return it->c;
  return 0;
}

}  // namespace

std::u32string decode_utf8(const std::string& s) {
  std::u32string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char b = p[i];
    if (b < 0x80) {
      out.push_back(b);
      ++i;
      continue;
    }
    int len;
    char32_t c;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b >= 0xC2 && b <= 0xDF) {
      len = 2, c = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
      len = 3, c = b & 0x0F;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      len = 4, c = b & 0x07;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    } else {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    size_t j = 1;
    for (; j < static_cast<size_t>(len) && i + j < n; ++j) {
      const unsigned char t = p[i + j];
      if (j == 1 ? (t < lo || t > hi) : (t < 0x80 || t > 0xBF)) break;
      c = (c << 6) | (t & 0x3F);
    }
    if (j == static_cast<size_t>(len)) {
      out.push_back(c);
    } else {
      out.push_back(0xFFFD);  // maximal invalid subpart: the bytes consumed so far
    }
    i += j;
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string encode_utf8(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

bool is_letter(char32_t c) { return class_bits(c) & 1; }
bool is_number(char32_t c) { return class_bits(c) & 2; }
bool is_whitespace(char32_t c) { return class_bits(c) & 4; }
bool is_grapheme_extend(char32_t c) { return class_bits(c) & 8; }
bool is_grapheme_control(char32_t c) { return c < 0x80 ? (c < 0x20 || c == 0x7F) : (class_bits(c) & 16) != 0; }

std::u32string to_lower(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (char32_t c : s) {
    if (c < 0x80) {
      out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
      continue;
    }
    if (c == 0x130) {  // LATIN CAPITAL LETTER I WITH DOT ABOVE -> i + COMBINING DOT ABOVE
      out.push_back('i');
      out.push_back(0x307);
      continue;
    }
    auto it = std::upper_bound(std::begin(kLowerRuns), std::end(kLowerRuns), static_cast<uint32_t>(c),
                               [](uint32_t v, const LowerRun& r) { return v < r.first; });
    if (it != std::begin(kLowerRuns)) {
      --it;
      if (c <= it->last && (c - it->first) % it->step == 0) {
        out.push_back(static_cast<char32_t>(static_cast<uint32_t>(c) + it->delta));
        continue;
      }
    }
    out.push_back(c);
  }
  return out;
}

std::u32string nfc(const std::u32string& s) {
  // Fast path: ASCII / below U+0300 with no composing candidates stays as is.
  bool simple = true;
  for (char32_t c : s)
    if (c >= 0x300) {
      simple = false;
      break;
    }
  if (simple) return s;
  std::u32string d;
  d.reserve(s.size() + 8);
  for (char32_t c : s) decompose(c, d);
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < d.size();) {
    if (combining_class(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && combining_class(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + i, d.begin() + j,
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  // Canonical composition.
  std::u32string out;
  out.reserve(d.size());
  int starter = -1;  // index in out of the last starter
  int last_cc = -1;
  for (char32_t c : d) {
    const int cc = combining_class(c);
    if (starter >= 0) {
      const bool blocked = last_cc != -1 && last_cc >= cc;  // a character in between blocks c
      if (!blocked) {
        if (const char32_t comp = compose_pair(out[starter], c)) {
          out[starter] = comp;
          continue;
        }
      }
    }
    if (cc == 0) {
      starter = static_cast<int>(out.size());
      last_cc = -1;
    } else {
      last_cc = cc;
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace mmdit::unicode
