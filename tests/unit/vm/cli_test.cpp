// The hvtrace command's answer to usage mistakes, run as a user would run it (the built binary as
// a child process): one "hvtrace: error: ..." line naming what was wrong, exit 2 like every other
// user error; --help and --version still print and exit 0. No guest needed.
#include "vm/process.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace hvtrace::vm {
namespace {

using namespace std::chrono_literals;

ProcessResult hvtrace(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {HVTRACE_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run_process(argv, 30s);
  if (!r) return ProcessResult{-1, "", r.error().message};
  return std::move(r).value();
}

// Exactly one line on stderr, nothing on stdout, exit 2.
void expect_one_line_user_error(const ProcessResult& r, const std::string& wanted) {
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err.rfind("hvtrace: error: ", 0), 0u) << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "not one line: " << r.err;
  EXPECT_NE(r.err.find(wanted), std::string::npos) << r.err;
}

TEST(CliUsage, UnknownCommandIsNamed) {
  expect_one_line_user_error(hvtrace({"frobnicate"}), "unknown command 'frobnicate' (try hvtrace --help)");
  expect_one_line_user_error(hvtrace({"vm", "frob"}), "unknown command 'frob' (try hvtrace vm --help)");
}

TEST(CliUsage, UnknownOptionIsNamedWithTheCommandItWasGivenTo) {
  expect_one_line_user_error(hvtrace({"ps", "--frob"}), "unknown option '--frob' (try hvtrace ps --help)");
  expect_one_line_user_error(hvtrace({"vm", "up", "--bogus=3"}), "unknown option '--bogus'");
  expect_one_line_user_error(hvtrace({"ps", "stray"}), "unexpected argument 'stray'");
}

TEST(CliUsage, OutOfRangeAndMissingValuesNameTheOption) {
  expect_one_line_user_error(hvtrace({"vm", "up", "--memory", "5000"}), "--memory");
  expect_one_line_user_error(hvtrace({"vm", "up", "--memory"}), "option --memory needs a value");
  expect_one_line_user_error(hvtrace({"events", "-c"}), "option --count needs a value");
}

TEST(CliUsage, GuestForwardToAnythingButTheHostsLoopbackIsRefused) {
  // Checked before any image is loaded or QEMU started (containment: guestfwd.hpp).
  expect_one_line_user_error(hvtrace({"vm", "up", "--name", "cli-gf", "--guestfwd", "tcp:10.0.2.100:80-10.0.0.1:80"}),
                             "is not a loopback address");
  expect_one_line_user_error(hvtrace({"run", "--guestfwd", "tcp:10.0.2.100:80-cmd:nc evil 80"}), "loopback");
  expect_one_line_user_error(hvtrace({"vm", "up", "--guestfwd", "tcp:10.0.2.2:80-127.0.0.1:8080"}), "is taken");
}

TEST(CliUsage, TypingSpeedIsCheckedBeforeAnyGuestBoots) {
  // Before: the guest booted and every run of `bench session` failed inside scripts/attacker.
  expect_one_line_user_error(hvtrace({"bench", "session", "--typing", "x"}), "--typing: 'x' is not MIN-MAX milliseconds per key");
  expect_one_line_user_error(hvtrace({"bench", "session", "--typing", "30-10"}), "MIN is above MAX");
  expect_one_line_user_error(hvtrace({"run", "--typing", "5-"}), "--typing: '5-' is not MIN-MAX");
}

TEST(CliUsage, MissingCommandIsAUserError) {
  expect_one_line_user_error(hvtrace({}), "a command is required");
  expect_one_line_user_error(hvtrace({"vm", "exec"}), "(try hvtrace vm exec --help)");
}

TEST(CliUsage, HelpAndVersionStillSucceed) {
  const auto help = hvtrace({"--help"});
  EXPECT_EQ(help.exit_code, 0) << help.err;
  EXPECT_NE(help.out.find("Usage:"), std::string::npos) << help.out;
  const auto sub_help = hvtrace({"vm", "exec", "--help"});
  EXPECT_EQ(sub_help.exit_code, 0) << sub_help.err;
  EXPECT_NE(sub_help.out.find("--name"), std::string::npos) << sub_help.out;
  const auto version = hvtrace({"--version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_EQ(version.out.rfind("hvtrace ", 0), 0u) << version.out;
}

}  // namespace
}  // namespace hvtrace::vm
