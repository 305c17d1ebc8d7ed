#include "output.hpp"

#include "common/result.hpp"

#include <fmt/core.h>

#include <stdio_ext.h>

#include <cerrno>
#include <system_error>

namespace hvtrace::tools {

namespace {
[[noreturn]] void throw_write_error() {
  throw std::system_error(errno != 0 ? errno : EIO, std::generic_category(), "writing output");
}
}  // namespace

void write_line(std::FILE* out, std::string_view line) {
  errno = 0;
  if (std::fwrite(line.data(), 1, line.size(), out) != line.size() || std::fputc('\n', out) == EOF)
    throw_write_error();
}

void flush_output(std::FILE* out) {
  errno = 0;
  if (std::fflush(out) != 0) throw_write_error();
}

bool print_guarded(std::FILE* out, const std::function<void()>& body) {
  try {
    body();
    flush_output(out);
    return true;
  } catch (const std::system_error& e) {
    if (e.code() == std::errc::broken_pipe) {
      // The reader is gone: drop what is still buffered so exit() does not try again.
      __fpurge(out);
      std::clearerr(out);
      return false;
    }
    throw UserError(fmt::format("cannot write the output: {}", e.code().message()));
  }
}

}  // namespace hvtrace::tools
