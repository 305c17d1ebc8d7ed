#include "bench/scale_report.hpp"

#include "bench/stats.hpp"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <set>

namespace hvtrace::bench {

namespace {

using nlohmann::json;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double num(const json& run, const char* key) {
  auto it = run.find(key);
  if (it == run.end() || !it->is_number()) return kNaN;
  return it->get<double>();
}

// Per guest count: column -> round -> the runs of that round's batch (one per guest).
using Batches = std::map<unsigned, std::map<std::string, std::map<unsigned, std::vector<json>>>>;

Batches batches_of(const json& results) {
  Batches b;
  for (const auto& run : results.at("runs"))
    b[run.value("vms", 0u)][run.value("column", "")][run.value("round", 0u)].push_back(run);
  return b;
}

// One value per round: the mean over the batch's guests (NaN if any guest's run failed).
std::vector<double> per_round(const std::map<unsigned, std::vector<json>>& rounds, unsigned n_rounds, const char* key) {
  std::vector<double> v(n_rounds, kNaN);
  for (const auto& [r, runs] : rounds) {
    if (r >= n_rounds || runs.empty()) continue;
    double sum = 0;
    bool ok = true;
    for (const auto& run : runs) {
      const double x = num(run, key);
      ok = ok && run.value("ok", false) && !std::isnan(x);
      sum += x;
    }
    if (ok) v[r] = sum / static_cast<double>(runs.size());
  }
  return v;
}

std::vector<double> all_values(const std::map<unsigned, std::vector<json>>& rounds, const char* key) {
  std::vector<double> v;
  for (const auto& [r, runs] : rounds)
    for (const auto& run : runs)
      if (run.value("ok", false) && !std::isnan(num(run, key))) v.push_back(num(run, key));
  return v;
}

std::string median_text(const std::vector<double>& v, double scale = 1, const char* f = "{:.2f}") {
  const Summary s = summarize(v);
  if (s.n == 0) return "–";
  return fmt::format(fmt::runtime(f), s.median * scale);
}

const std::map<unsigned, std::vector<json>>& column(const Batches& b, unsigned n, const std::string& c) {
  static const std::map<unsigned, std::vector<json>> empty;
  auto it = b.find(n);
  if (it == b.end()) return empty;
  auto jt = it->second.find(c);
  return jt == it->second.end() ? empty : jt->second;
}

}  // namespace

std::string make_scale_report(const json& results) {
  const auto b = batches_of(results);
  const unsigned rounds = results.at("config").value("rounds", 1u);
  std::string md = "# hvtrace bench scale\n\n";
  md += fmt::format("`{}`  \n{}; {} round(s) of {} workload iteration(s) per guest; started {}.\n\n",
                    results.value("command", "?"), results.value("machine", json::object()).value("cpu_model", "?"), rounds,
                    results.at("config").value("iterations", 1u), results.value("started", "?"));
  md += "Every guest of a row runs the jansson workload at the same time, in rounds: once untraced (monitor loaded, "
        "nobody attached) and once with its shell traced by `hvtrace trace --method 5` (one tracer per guest), order "
        "alternating by round. Times are medians over guests and rounds; overheads are traced/untraced of the per-round "
        "means over the guests, with 95% bootstrap intervals over rounds.\n\n";
  md += "| guests | untraced guest s | traced guest s | tracing overhead (guest time) | tracing overhead (QEMU CPU) | "
        "untraced vs 1 guest | tracer peak RSS MiB | QEMU RSS MiB | events lost |\n";
  md += "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  std::vector<double> base1;
  if (b.count(1)) base1 = all_values(column(b, 1, "idle"), "guest_s");
  for (const auto& [n, cols] : b) {
    const auto& idle = column(b, n, "idle");
    const auto& traced = column(b, n, "m5");
    const auto g = bootstrap_ratio(per_round(traced, rounds, "guest_s"), per_round(idle, rounds, "guest_s"));
    const auto c = bootstrap_ratio(per_round(traced, rounds, "qemu_cpu_s"), per_round(idle, rounds, "qemu_cpu_s"));
    std::string vs1 = "–";
    const Summary s1 = summarize(base1), sn = summarize(all_values(idle, "guest_s"));
    if (s1.n != 0 && sn.n != 0 && s1.median > 0) vs1 = fmt::format("{:.2f}x", sn.median / s1.median);
    double lost = 0;
    for (const double x : all_values(traced, "lost")) lost += x;
    md += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {:.0f} |\n", n, median_text(all_values(idle, "guest_s")),
                      median_text(all_values(traced, "guest_s")), percent_text(g), percent_text(c), vs1,
                      median_text(all_values(traced, "tracer_peak_rss_kib"), 1.0 / 1024, "{:.1f}"),
                      median_text(all_values(traced, "qemu_rss_kib"), 1.0 / 1024, "{:.0f}"), lost);
  }
  md += "\nTargets: four watched guests on this 2-core host each within 5% of an unwatched one (issue 11); "
        "the row for 4 guests shows it, with its interval.\n";
  return md;
}

std::vector<std::string> check_scale_counts(const json& results) {
  std::vector<std::string> problems;
  const auto b = batches_of(results);
  for (const auto& [n, cols] : b)
    for (const auto& [col, rounds] : cols)
      for (const auto& [r, runs] : rounds) {
        if (runs.size() != n) problems.push_back(fmt::format("{} guests, {} round {}: {} runs", n, col, r, runs.size()));
        std::set<double> calls;
        for (const auto& run : runs) {
          const std::string where = fmt::format("{} guests, {} round {}, guest {}", n, col, r, run.value("guest", 0u));
          if (!run.value("ok", false)) {
            problems.push_back(fmt::format("{}: {}", where, run.value("error", "failed")));
            continue;
          }
          if (col == "m5") {
            calls.insert(num(run, "monitored_calls"));
            if (num(run, "lost") > 0) problems.push_back(fmt::format("{}: {} events lost", where, num(run, "lost")));
          }
        }
        if (calls.size() > 1)
          problems.push_back(fmt::format("{} guests, round {}: traced guests saw different numbers of monitored calls", n, r));
      }
  return problems;
}

}  // namespace hvtrace::bench
