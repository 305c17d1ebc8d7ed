#include "bench/stats.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

namespace hvtrace::bench {

Summary summarize(const std::vector<double>& xs_in) {
  std::vector<double> xs;
  for (double x : xs_in)
    if (!std::isnan(x)) xs.push_back(x);
  Summary s;
  s.n = xs.size();
  if (xs.empty()) return s;
  std::sort(xs.begin(), xs.end());
  s.min = xs.front();
  s.max = xs.back();
  s.mean = std::accumulate(xs.begin(), xs.end(), 0.0) / static_cast<double>(xs.size());
  s.median = xs.size() % 2 ? xs[xs.size() / 2] : (xs[xs.size() / 2 - 1] + xs[xs.size() / 2]) / 2;
  return s;
}

std::optional<Interval> bootstrap_ratio(const std::vector<double>& num_in, const std::vector<double>& den_in,
                                        unsigned resamples, double level, std::uint64_t seed) {
  std::vector<double> num, den;
  for (std::size_t i = 0; i < std::min(num_in.size(), den_in.size()); ++i)
    if (!std::isnan(num_in[i]) && !std::isnan(den_in[i])) {
      num.push_back(num_in[i]);
      den.push_back(den_in[i]);
    }
  if (num.empty()) return std::nullopt;
  const auto ratio = [](double n, double d) -> std::optional<double> {
    if (d == 0) return std::nullopt;
    return n / d;
  };
  const auto point = ratio(std::accumulate(num.begin(), num.end(), 0.0), std::accumulate(den.begin(), den.end(), 0.0));
  if (!point) return std::nullopt;
  Interval out{*point, *point, *point};
  if (num.size() < 2 || resamples == 0) return out;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::size_t> pick(0, num.size() - 1);
  std::vector<double> rs;
  rs.reserve(resamples);
  for (unsigned b = 0; b < resamples; ++b) {
    double sn = 0, sd = 0;
    for (std::size_t k = 0; k < num.size(); ++k) {
      const std::size_t i = pick(rng);
      sn += num[i];
      sd += den[i];
    }
    if (auto r = ratio(sn, sd)) rs.push_back(*r);
  }
  if (rs.empty()) return out;
  std::sort(rs.begin(), rs.end());
  const double a = (1 - level) / 2;
  const auto at = [&](double q) {
    const double pos = q * static_cast<double>(rs.size() - 1);
    const auto i = static_cast<std::size_t>(pos);
    const double f = pos - static_cast<double>(i);
    return i + 1 < rs.size() ? rs[i] * (1 - f) + rs[i + 1] * f : rs[i];
  };
  out.lo = at(a);
  out.hi = at(1 - a);
  return out;
}

std::string percent_text(const std::optional<Interval>& i) {
  if (!i) return "–";
  return fmt::format("{:+.1f}% [{:+.1f}, {:+.1f}]", (i->point - 1) * 100, (i->lo - 1) * 100, (i->hi - 1) * 100);
}

std::string verdict_text(const std::optional<Interval>& i, double target, bool upper_bound) {
  if (!i) return "not measured";
  if (upper_bound) {
    if (i->hi <= target) return "**met**";
    if (i->lo > target) return "**not met**";
  } else {
    if (i->lo >= target) return "**met**";
    if (i->hi < target) return "**not met**";
  }
  return "undecidable within the noise";
}

}  // namespace hvtrace::bench
