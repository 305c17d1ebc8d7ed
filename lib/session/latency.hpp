// How late `hvtrace session --follow` prints a command: for each printed line, the host time from
// the guest event that completed the command line (the monitor's timestamp of the terminal write
// that carried the Enter key, host CLOCK_MONOTONIC) to the moment the line was written. The shell
// execs the command only after that write, so this is an upper bound on "printed after its exec".
// Bounded: the first kKept samples are kept for the median; count and max cover every sample.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hvtrace::session {

class FollowLatency {
 public:
  static constexpr std::size_t kKept = 1u << 14;

  // `event_ns` and `printed_ns`: host CLOCK_MONOTONIC (a print "before" its event counts as 0).
  void add(std::uint64_t event_ns, std::uint64_t printed_ns);
  [[nodiscard]] std::uint64_t count() const { return count_; }
  [[nodiscard]] std::uint64_t max_ns() const { return max_; }
  [[nodiscard]] std::uint64_t median_ns() const;   // over the kept samples; 0 when empty
  // "median 1.2 ms, max 3.4 ms over 5 commands (0 over 100 ms)", or "no command printed".
  [[nodiscard]] std::string summary() const;

 private:
  std::vector<std::uint64_t> kept_;
  std::uint64_t count_ = 0, max_ = 0, over_100ms_ = 0;
};

}  // namespace hvtrace::session
