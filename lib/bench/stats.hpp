// Small statistics for benchmark reports: summary of one column's runs, and the 95% bootstrap
// confidence interval of a ratio of means over interleaved rounds (the rounds are resampled as
// pairs, so drift that hit both columns of a round stays paired).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hvtrace::bench {

struct Summary {
  std::size_t n = 0;
  double mean = 0, median = 0, min = 0, max = 0;
};
[[nodiscard]] Summary summarize(const std::vector<double>& xs);

struct Interval {
  double point = 0;   // mean(num) / mean(den) over all rounds
  double lo = 0, hi = 0;
};
// Rounds are paired: num[i] and den[i] come from round i. Rounds where either is missing (NaN)
// are left out. Returns nullopt with no complete round or a zero denominator.
[[nodiscard]] std::optional<Interval> bootstrap_ratio(const std::vector<double>& num, const std::vector<double>& den,
                                                      unsigned resamples = 4000, double level = 0.95,
                                                      std::uint64_t seed = 0x5eed);

// "+1.2% [-0.5, +3.0]": a ratio interval as an overhead in percent; "–" without one.
[[nodiscard]] std::string percent_text(const std::optional<Interval>& i);
// A target judged on the whole interval: "**met**" when all of it is on the right side of `target`
// (at or below it when `upper_bound`, at or above it otherwise), "**not met**" when all of it is on
// the wrong side, else "undecidable within the noise"; "not measured" without an interval.
[[nodiscard]] std::string verdict_text(const std::optional<Interval>& i, double target, bool upper_bound = true);

}  // namespace hvtrace::bench
