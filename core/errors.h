// User-facing error types. Every error a user can cause is one of these; main() catches them,
// prints what() as one line and exits 2 (bad input) or 1 (runtime failure).
#pragma once
#include <stdexcept>
#include <string>
#include <vector>

namespace mmdit {

// Bad input: exit code 2. Subclasses say which kind of input was wrong.
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct UsageError : InputError {  // bad flag or flag combination
  using InputError::InputError;
};
struct FileError : InputError {  // missing/unreadable file or folder
  using InputError::InputError;
};
struct FormatError : InputError {  // malformed file contents (safetensors, JSON, config)
  using InputError::InputError;
};
struct ShapeError : InputError {  // tensor/shape/size that does not fit the model
  using InputError::InputError;
};

// Something failed while running valid input (out of memory, device error): exit code 1.
struct RuntimeFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Not an error: ends a command that has already reported its outcome with this exit status (`mmdit run`:
// 2 after listing every problem of a job file, 1 when some job failed, 130 when interrupted). main()
// prints nothing more.
struct ExitStatus {
  int code;
};

// For messages about many names (missing tensors, ...): up to 5 of them, then "and N more".
inline std::string some_names(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < 5; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > 5) out += " and " + std::to_string(names.size() - 5) + " more";
  return out;
}

}  // namespace mmdit
