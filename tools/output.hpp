// Writing a command's results to stdout (or any FILE*), with one policy for failed writes, so
// every command behaves the same in a pipeline: when the reader goes away (EPIPE:
// `hvtrace events | head`) the command stops quietly and cleans up; any other write failure (disk
// full, stdout closed) is an error the user sees. SIGPIPE is ignored process-wide
// (vm::install_termination_handlers), so a vanished reader shows up as EPIPE here.
#pragma once

#include <cstdio>
#include <functional>
#include <string_view>

namespace hvtrace::tools {

// Write `line` and a newline to `out`. A failure throws std::system_error with the errno, the
// way fmt::print reports it, so print_guarded() sees both alike.
void write_line(std::FILE* out, std::string_view line);
// Flush `out`; throws std::system_error on failure (buffered writes fail here).
void flush_output(std::FILE* out);

// Run `body`, which prints to `out`, then flush `out`. Returns true when everything was written,
// false when the reader went away (the caller stops quietly: exit 0, no message). Any other
// write error throws UserError naming it.
[[nodiscard]] bool print_guarded(std::FILE* out, const std::function<void()>& body);

}  // namespace hvtrace::tools
