#include "core/atomic_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <unistd.h>

#include "core/errors.h"

namespace mmdit {

void atomic_write(const std::filesystem::path& path, const std::function<void(const std::filesystem::path&)>& write) {
  namespace fs = std::filesystem;
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  if (!fs::is_directory(dir)) throw FileError(path.string() + ": output folder " + dir.string() + " does not exist");
  // A dot-name in the same folder: rename() is atomic only within one filesystem.
  const fs::path tmp = dir / ("." + path.filename().string() + ".tmp-" + std::to_string(::getpid()));
  try {
    write(tmp);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    std::error_code ec;
    fs::remove(tmp, ec);
    throw FileError(path.string() + ": cannot write (" + std::strerror(e) + ")");
  }
}

void atomic_write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  atomic_write(path, [&](const std::filesystem::path& tmp) {
    FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) throw FileError(path.string() + ": cannot create (" + std::strerror(errno) + ")");
    bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    ok = (std::fflush(f) == 0) && ok;
    ok = (::fsync(fileno(f)) == 0) && ok;
    ok = (std::fclose(f) == 0) && ok;
    if (!ok) throw FileError(path.string() + ": write failed (disk full?)");
  });
}

}  // namespace mmdit
