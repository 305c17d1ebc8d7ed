// tools/output: what every hvtrace command does when writing its results fails — stop quietly when
// the reader of a pipe went away, an error naming the cause for anything else.
#include "output.hpp"

#include "common/result.hpp"

#include <fmt/core.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <string>

namespace hvtrace::tools {
namespace {

struct Pipe {
  Pipe() {
    int fds[2];
    EXPECT_EQ(pipe(fds), 0);
    read_fd = fds[0];
    write_end = fdopen(fds[1], "w");
  }
  ~Pipe() {
    if (read_fd >= 0) close(read_fd);
    if (write_end != nullptr) std::fclose(write_end);
  }
  int read_fd = -1;
  std::FILE* write_end = nullptr;
};

class Output : public ::testing::Test {
 protected:
  void SetUp() override { signal(SIGPIPE, SIG_IGN); }  // as hvtrace does (vm::install_termination_handlers)
};

TEST_F(Output, LinesReachTheReader) {
  Pipe p;
  EXPECT_TRUE(print_guarded(p.write_end, [&] {
    write_line(p.write_end, "first");
    write_line(p.write_end, "second");
  }));
  char buf[64] = {};
  const ssize_t n = read(p.read_fd, buf, sizeof buf);
  EXPECT_EQ(std::string(buf, static_cast<std::size_t>(n)), "first\nsecond\n");
}

TEST_F(Output, ReaderThatLeftStopsTheWriterQuietly) {
  Pipe p;
  close(p.read_fd);
  p.read_fd = -1;
  long written = 0;
  bool ok = true;
  EXPECT_NO_THROW(ok = print_guarded(p.write_end, [&] {
    for (;; ++written) {  // runs until the write fails: never returns normally
      write_line(p.write_end, std::string(100, 'x'));
      flush_output(p.write_end);
    }
  }));
  EXPECT_FALSE(ok);
  EXPECT_EQ(written, 0);  // the very first flush already failed
}

TEST_F(Output, FmtPrintToAGoneReaderIsAlsoQuiet) {
  Pipe p;
  close(p.read_fd);
  p.read_fd = -1;
  EXPECT_FALSE(print_guarded(p.write_end, [&] { fmt::print(p.write_end, "{}\n", "table row"); }));
}

TEST_F(Output, OtherWriteFailuresAreUserErrorsNamingTheCause) {
  std::FILE* full = std::fopen("/dev/full", "w");
  ASSERT_NE(full, nullptr);
  try {
    (void)print_guarded(full, [&] { write_line(full, "does not fit"); });
    ADD_FAILURE() << "a full device did not fail the output";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("No space left on device"), std::string::npos) << e.what();
  }
  std::fclose(full);
}

}  // namespace
}  // namespace hvtrace::tools
