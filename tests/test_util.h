// Helpers shared by the tests: paths, temp folders, running the mmdit binary, relative error.
#pragma once
#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace mmdit::test {

inline std::filesystem::path source_dir() { return MMDIT_SOURCE_DIR; }
inline std::filesystem::path shared_dir() { return source_dir().parent_path() / "shared"; }

// A fresh empty folder under the build tree for one test.
inline std::filesystem::path temp_dir(const std::string& name) {
  auto p = std::filesystem::path(MMDIT_TEST_TMP) / name;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs `mmdit ARGS` through the shell, capturing stdout and stderr.
inline RunResult run_mmdit(const std::string& args, const std::string& tag = "run") {
  auto dir = std::filesystem::path(MMDIT_TEST_TMP) / "runs";
  std::filesystem::create_directories(dir);
  // Unique names: ctest -j runs tests in parallel processes.
  static int counter = 0;
  const std::string stem = tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  const auto out = dir / (stem + ".out"), err = dir / (stem + ".err");
  const std::string cmd = std::string(MMDIT_BINARY) + " " + args + " >" + out.string() + " 2>" + err.string();
  int status = std::system(cmd.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  auto slurp = [](const std::filesystem::path& p) {
    std::string s;
    if (FILE* f = std::fopen(p.c_str(), "rb")) {
      std::array<char, 4096> buf;
      size_t n;
      while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) s.append(buf.data(), n);
      std::fclose(f);
    }
    return s;
  };
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// Bad input: `mmdit ARGS` exits 2 with one line of stderr that contains `message`, and writes no `output`.
inline void expect_input_error(const std::string& args, const std::string& message, const std::filesystem::path& output,
                               const std::string& tag = "bad_input") {
  auto r = run_mmdit(args, tag);
  EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << ": " << r.err;
  EXPECT_NE(r.err.find(message), std::string::npos) << args << ": " << r.err;
  EXPECT_FALSE(std::filesystem::exists(output)) << args;
}

}  // namespace mmdit::test
