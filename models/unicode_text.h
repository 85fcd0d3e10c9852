// Small Unicode helpers for the tokenizers (torch-free): UTF-8 decoding that never fails, character
// classes (letter, number, white space, grapheme extend), lower-casing and NFC, from tables generated
// by scripts/gen_unicode_tables.py (Python unicodedata 14.0).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mmdit::unicode {

// Decodes UTF-8; every invalid or truncated sequence (and surrogates, overlongs, > U+10FFFF) becomes
// one U+FFFD per maximal invalid subpart, as Python's bytes.decode(errors="replace") does.
std::u32string decode_utf8(const std::string& s);
void append_utf8(std::string& out, char32_t c);
std::string encode_utf8(const std::u32string& s);

bool is_letter(char32_t c);      // general category L*
bool is_number(char32_t c);      // general category N*
bool is_whitespace(char32_t c);  // White_Space property (Rust char::is_whitespace, Oniguruma \s)
bool is_grapheme_extend(char32_t c);   // marks, ZWJ/ZWNJ, emoji modifiers (continue a grapheme cluster)
bool is_grapheme_control(char32_t c);  // Cc, Zl, Zp, most Cf: a grapheme cluster of its own

std::u32string to_lower(const std::u32string& s);  // full per-character lower-casing (Rust to_lowercase)
std::u32string nfc(const std::u32string& s);       // canonical composition (NFC)

}  // namespace mmdit::unicode
