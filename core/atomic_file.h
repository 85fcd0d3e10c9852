// Atomic output: write to a temporary name next to the target, then rename, so a reader (or an
// interrupted run) never sees a half-written file.
#pragma once
#include <filesystem>
#include <functional>
#include <string>

namespace mmdit {

// Calls write(tmp_path) and renames tmp_path to path; removes the temp file if write throws.
void atomic_write(const std::filesystem::path& path, const std::function<void(const std::filesystem::path&)>& write);
void atomic_write_bytes(const std::filesystem::path& path, const std::string& bytes);

}  // namespace mmdit
