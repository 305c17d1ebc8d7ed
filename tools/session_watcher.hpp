// `hvtrace session` run in the background by another command (`hvtrace run`'s honeypot demo,
// `hvtrace bench session`): this same binary, its stdout (follow lines and closing summary) into a
// file, its stderr into a log read for the readiness line; stopped with SIGINT, which makes it
// close and flush every session and print its summary.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace hvtrace::tools {

// The repository: $HVTRACE_SOURCE_DIR, or the first directory above this binary that holds
// scripts/attacker (build/<preset>/tools/hvtrace -> three levels up); empty if none.
std::filesystem::path source_dir();

class SessionWatcher {
 public:
  // `hvtrace session --vm <vm_name> -o <dir> <extra...>`
  SessionWatcher(const std::string& vm_name, const std::filesystem::path& dir, const std::filesystem::path& out,
                 const std::filesystem::path& log, const std::vector<std::string>& extra = {});
  ~SessionWatcher();   // SIGKILL if still running
  SessionWatcher(const SessionWatcher&) = delete;
  SessionWatcher& operator=(const SessionWatcher&) = delete;

  [[nodiscard]] pid_t pid() const { return pid_; }
  // Wait for "hvtrace: watching ..." on its stderr; false if it exited or the time ran out.
  bool wait_ready(std::chrono::seconds limit);
  bool exited();
  // SIGINT, then wait up to `limit`; true once it has exited.
  bool stop(std::chrono::seconds limit);
  [[nodiscard]] int status() const { return status_; }
  [[nodiscard]] double cpu_seconds() const;       // its user + system time, once it has exited
  [[nodiscard]] long max_rss_kib() const { return usage_.ru_maxrss; }   // its peak RSS, once it has exited
  [[nodiscard]] std::string output() const;       // its stdout so far
  [[nodiscard]] std::string log() const;          // its stderr so far

 private:
  std::filesystem::path out_, log_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  rusage usage_{};
};

// The check of a --typing value (milliseconds per key, MIN-MAX, as scripts/attacker --delay takes
// it) for CLI11's check(): empty if valid, else why, before any guest is booted.
std::string typing_error(const std::string& v);

}  // namespace hvtrace::tools
