#include "session/latency.hpp"

#include <fmt/core.h>

#include <algorithm>

namespace hvtrace::session {

void FollowLatency::add(std::uint64_t event_ns, std::uint64_t printed_ns) {
  const std::uint64_t d = printed_ns > event_ns ? printed_ns - event_ns : 0;
  ++count_;
  max_ = std::max(max_, d);
  if (d > 100'000'000ULL) ++over_100ms_;
  if (kept_.size() < kKept) kept_.push_back(d);
}

std::uint64_t FollowLatency::median_ns() const {
  if (kept_.empty()) return 0;
  std::vector<std::uint64_t> v = kept_;
  const auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  if (v.size() % 2 != 0) return *mid;
  const std::uint64_t upper = *mid;
  const std::uint64_t lower = *std::max_element(v.begin(), mid);
  return lower + (upper - lower) / 2;
}

std::string FollowLatency::summary() const {
  if (count_ == 0) return "no command printed";
  return fmt::format("median {:.1f} ms, max {:.1f} ms over {} command(s) ({} over 100 ms)", static_cast<double>(median_ns()) / 1e6,
                     static_cast<double>(max_) / 1e6, count_, over_100ms_);
}

}  // namespace hvtrace::session
