#include "bench/report.hpp"

#include "bench/stats.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>

namespace hvtrace::bench {

namespace {

using nlohmann::json;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

const std::vector<std::string>& display_order() {
  static const std::vector<std::string> order = {"none", "none2", "idle", "m2", "m3", "m4", "m5", "strace", "gdbstub"};
  return order;
}

std::string column_title(const std::string& c) {
  static const std::map<std::string, std::string> t = {
      {"none", "none"},       {"none2", "none (A/A)"},   {"idle", "idle plugin"},
      {"m2", "2: all, app filter"}, {"m3", "3: CR3 in app"}, {"m4", "4: CR3 pre-filtered"},
      {"m5", "5: async, in hypervisor"}, {"strace", "strace -f (in guest)"}, {"gdbstub", "gdb stub"}};
  auto it = t.find(c);
  return it == t.end() ? c : it->second;
}

double num(const json& run, const char* key) {
  auto it = run.find(key);
  if (it == run.end() || !it->is_number()) return kNaN;
  return it->get<double>();
}

// One PTI setting: per column, per round, the run (or nothing).
struct Setting {
  std::string pti;
  unsigned rounds = 0;
  std::vector<std::string> columns;
  std::map<std::string, std::map<unsigned, json>> runs;   // column -> round -> run

  std::vector<double> series(const std::string& col, const char* key) const {
    std::vector<double> v(rounds, kNaN);
    auto it = runs.find(col);
    if (it == runs.end()) return v;
    for (const auto& [r, run] : it->second)
      if (r < rounds && run.value("ok", false)) v[r] = num(run, key);
    return v;
  }
  bool has(const std::string& col) const { return runs.count(col) != 0; }
};

std::vector<Setting> settings_of(const json& results) {
  std::vector<Setting> out;
  const unsigned rounds = results.at("config").value("rounds", 1u);
  std::vector<std::string> cols;
  for (const auto& c : results.at("config").at("columns")) cols.push_back(c.get<std::string>());
  for (const auto& p : results.at("config").at("pti")) {
    Setting s;
    s.pti = p.get<std::string>();
    s.rounds = rounds;
    for (const auto& c : display_order())
      if (std::find(cols.begin(), cols.end(), c) != cols.end()) s.columns.push_back(c);
    for (const auto& run : results.at("runs"))
      if (run.value("pti", "") == s.pti) s.runs[run.value("column", "")][run.value("round", 0u)] = run;
    out.push_back(std::move(s));
  }
  return out;
}

// Bootstrap over rounds of any statistic of the per-round values of several columns.
std::optional<Interval> bootstrap_over_rounds(const std::vector<std::vector<double>>& cols,
                                              const std::function<std::optional<double>(const std::vector<double>& sums)>& stat,
                                              unsigned resamples = 4000) {
  std::vector<unsigned> complete;
  const std::size_t n = cols.empty() ? 0 : cols[0].size();
  for (unsigned r = 0; r < n; ++r)
    if (std::all_of(cols.begin(), cols.end(), [&](const auto& c) { return r < c.size() && !std::isnan(c[r]); }))
      complete.push_back(r);
  if (complete.empty()) return std::nullopt;
  const auto eval = [&](const std::vector<unsigned>& idx) {
    std::vector<double> sums(cols.size(), 0);
    for (unsigned r : idx)
      for (std::size_t c = 0; c < cols.size(); ++c) sums[c] += cols[c][r];
    return stat(sums);
  };
  const auto point = eval(complete);
  if (!point) return std::nullopt;
  Interval out{*point, *point, *point};
  if (complete.size() < 2) return out;
  std::mt19937_64 rng(0x5eed);
  std::uniform_int_distribution<std::size_t> pick(0, complete.size() - 1);
  std::vector<double> rs;
  std::vector<unsigned> idx(complete.size());
  for (unsigned b = 0; b < resamples; ++b) {
    for (auto& i : idx) i = complete[pick(rng)];
    if (auto v = eval(idx)) rs.push_back(*v);
  }
  if (rs.empty()) return out;
  std::sort(rs.begin(), rs.end());
  out.lo = rs[static_cast<std::size_t>(0.025 * static_cast<double>(rs.size() - 1))];
  out.hi = rs[static_cast<std::size_t>(0.975 * static_cast<double>(rs.size() - 1))];
  return out;
}

std::optional<Interval> ratio_ci(const Setting& s, const std::string& col, const std::string& base, const char* key) {
  if (!s.has(col) || !s.has(base)) return std::nullopt;
  return bootstrap_ratio(s.series(col, key), s.series(base, key));
}

std::string count_text(const std::vector<double>& v) {
  const Summary s = summarize(v);
  if (s.n == 0) return "–";
  if (s.min == s.max) return fmt::format("{:.0f}", s.min);
  return fmt::format("{:.0f} ({:.0f}–{:.0f})", s.median, s.min, s.max);
}

std::string time_text(const std::vector<double>& v) {
  const Summary s = summarize(v);
  if (s.n == 0) return "–";
  if (s.n == 1) return fmt::format("{:.2f}", s.mean);
  return fmt::format("{:.2f} / {:.2f} [{:.2f}–{:.2f}]", s.mean, s.median, s.min, s.max);
}

const Setting* find_setting(const std::vector<Setting>& ss, const std::string& pti) {
  for (const auto& s : ss)
    if (s.pti == pti) return &s;
  return nullptr;
}

}  // namespace

Table1Report make_table1_report(const json& results) {
  Table1Report rep;
  const auto settings = settings_of(results);
  std::string md;
  md += "# hvtrace bench table1\n\n";
  const auto& cfg = results.at("config");
  md += fmt::format("Workload: the login shell of an SSH session into the default guest unpacks jansson 2.14 and compiles it "
                    "with tcc, {} iteration(s) per run; {} interleaved round(s) (order rotated); monitored calls: "
                    "read, write, open, openat, close, execve of that shell.\n\n",
                    cfg.value("iterations", 0u), cfg.value("rounds", 0u));
  if (results.contains("machine")) {
    const auto& m = results["machine"];
    md += fmt::format("Machine: {} ({} CPUs), host kernel {}, load average {} at the start, {} at the end.  \n",
                      m.value("cpu_model", "?"), m.value("cpus", 0), m.value("host_kernel", "?"), m.value("loadavg_start", "?"),
                      m.value("loadavg_end", "?"));
  }
  if (results.contains("versions")) {
    const auto& v = results["versions"];
    md += fmt::format("Versions: QEMU {}, guest kernel {}, hvtrace {}.  \n", v.value("qemu", "?"), v.value("guest_kernel", "?"),
                      v.value("hvtrace", "?"));
  }
  md += fmt::format("Command: `{}`\n\n", results.value("command", "?"));
  md += "Times in seconds: mean / median [min–max] over the rounds. Overheads relative to `none` with the 95% bootstrap "
        "interval over rounds. The guest clock stops while QEMU's gdb stub holds the VM, so the gdb stub's guest time "
        "misses its pauses: judge it by host wall time.\n";

  for (const auto& s : settings) {
    md += fmt::format("\n## pti={}\n\n", s.pti);
    md += "| |";
    for (const auto& c : s.columns) md += fmt::format(" {} |", column_title(c));
    md += "\n|---|";
    for (std::size_t i = 0; i < s.columns.size(); ++i) md += "---|";
    md += "\n";
    const auto row = [&](const std::string& title, const std::function<std::string(const std::string&)>& cell) {
      md += "| " + title + " |";
      for (const auto& c : s.columns) md += " " + cell(c) + " |";
      md += "\n";
    };
    row("runs ok", [&](const std::string& c) {
      unsigned ok = 0, all = 0;
      if (auto it = s.runs.find(c); it != s.runs.end())
        for (const auto& [r, run] : it->second) {
          ++all;
          ok += run.value("ok", false) ? 1 : 0;
        }
      return fmt::format("{}/{}", ok, all);
    });
    row("guest time (s)", [&](const std::string& c) { return time_text(s.series(c, "guest_s")); });
    row("host wall time (s)", [&](const std::string& c) { return time_text(s.series(c, "wall_s")); });
    row("QEMU CPU time (s)", [&](const std::string& c) { return time_text(s.series(c, "qemu_cpu_s")); });
    row("overhead vs none, guest clock", [&](const std::string& c) { return percent_text(ratio_ci(s, c, "none", "guest_s")); });
    row("overhead vs none, host wall", [&](const std::string& c) { return percent_text(ratio_ci(s, c, "none", "wall_s")); });
    row("overhead vs none, QEMU CPU", [&](const std::string& c) { return percent_text(ratio_ci(s, c, "none", "qemu_cpu_s")); });
    row("monitored syscalls seen", [&](const std::string& c) { return count_text(s.series(c, "monitored_calls")); });
    row("CR3 events delivered", [&](const std::string& c) { return count_text(s.series(c, "cr3_events")); });
    row("events delivered (all kinds)", [&](const std::string& c) { return count_text(s.series(c, "events_delivered")); });
    row("synchronous pauses", [&](const std::string& c) { return count_text(s.series(c, "sync_pauses")); });
    row("time paused (ms)", [&](const std::string& c) { return count_text(s.series(c, "sync_pause_ms")); });
    row("events lost", [&](const std::string& c) { return count_text(s.series(c, "lost")); });
    row("note", [&](const std::string& c) {
      auto it = s.runs.find(c);
      if (it == s.runs.end()) return std::string();
      for (const auto& [r, run] : it->second)
        if (run.value("partial", false)) return std::string("partial: sampled");
      return std::string();
    });
    row("host µs per delivered event", [&](const std::string& c) {
      // (wall - wall of none) / events, per round, then the median.
      const auto w = s.series(c, "wall_s"), b = s.series("none", "wall_s"), e = s.series(c, "events_delivered");
      std::vector<double> per;
      for (unsigned r = 0; r < s.rounds; ++r)
        if (!std::isnan(w[r]) && !std::isnan(b[r]) && !std::isnan(e[r]) && e[r] >= 1000) per.push_back((w[r] - b[r]) / e[r] * 1e6);
      const Summary m = summarize(per);
      return m.n ? fmt::format("{:.1f}", m.median) : std::string("–");
    });
    if (s.has("none") && s.has("none2"))
      md += fmt::format("\nNoise floor (A/A: none2 vs none, same configuration): guest clock {}, host wall {}, QEMU CPU {}.\n",
                        percent_text(ratio_ci(s, "none2", "none", "guest_s")), percent_text(ratio_ci(s, "none2", "none", "wall_s")),
                        percent_text(ratio_ci(s, "none2", "none", "qemu_cpu_s")));
  }

  // Targets of issue 10.
  md += "\n## Targets of issue 10\n\n| target | measured | verdict |\n|---|---|---|\n";
  if (const Setting* on = find_setting(settings, "on")) {
    const auto cr3 = bootstrap_over_rounds({on->series("m3", "cr3_events"), on->series("m4", "cr3_events")},
                                           [](const std::vector<double>& x) -> std::optional<double> {
                                             if (x[1] <= 0) return x[0] > 0 ? std::optional<double>(1e12) : std::nullopt;
                                             return x[0] / x[1];
                                           });
    md += fmt::format("| method 4 delivers ≥ 100x fewer CR3 events than method 3 (pti=on) | {} | {} |\n",
                      cr3 ? fmt::format("{:.0f}x [{:.0f}, {:.0f}]", cr3->point, cr3->lo, cr3->hi) : "–", verdict_text(cr3, 100, false));
    const auto q = bootstrap_over_rounds({on->series("m4", "guest_s"), on->series("m3", "guest_s"), on->series("none", "guest_s")},
                                         [](const std::vector<double>& x) -> std::optional<double> {
                                           const double o3 = x[1] / x[2] - 1, o4 = x[0] / x[2] - 1;
                                           if (o3 <= 0) return std::nullopt;
                                           return o4 / o3;
                                         });
    md += fmt::format("| method 4's overhead ≤ 1/18 of method 3's (pti=on, guest clock) | {} | {} |\n",
                      q ? fmt::format("{:.3f} [{:.3f}, {:.3f}] (1/18 = 0.056)", q->point, q->lo, q->hi) : "–",
                      verdict_text(q, 1.0 / 18));
  } else {
    md += "| method 4 vs method 3 with pti=on | not run (no pti=on setting) | not measured |\n";
  }
  for (const auto& s : settings) {
    const auto r = ratio_ci(s, "m5", "none", "guest_s");
    md += fmt::format("| method 5 within 3% of none (pti={}) | {} | {} |\n", s.pti, percent_text(r), verdict_text(r, 1.03));
  }
  for (const auto& s : settings) {
    const auto q = bootstrap_over_rounds({s.series("m5", "guest_s"), s.series("strace", "guest_s"), s.series("none", "guest_s")},
                                         [](const std::vector<double>& x) -> std::optional<double> {
                                           const double os = x[1] / x[2] - 1, o5 = x[0] / x[2] - 1;
                                           if (os <= 0) return std::nullopt;
                                           return o5 / os;
                                         });
    md += fmt::format("| default method (5) has ≤ 1/10 of strace -f's overhead (pti={}) | {} | {} |\n", s.pti,
                      q ? fmt::format("{:.3f} [{:.3f}, {:.3f}]", q->point, q->lo, q->hi) : "–", verdict_text(q, 0.1));
  }
  md += "| sync event ≥ 100x cheaper than a gdb-stub round trip | see `hvtrace bench events` | – |\n";
  md += "| 4 guests, method 5 per-VM overhead ≤ 5% | measured by `hvtrace bench scale` (scale.md) | – |\n";
  md += "\nA target is met only when its whole 95% interval is on the right side; not met when the whole interval is "
        "on the wrong side; otherwise the noise cannot decide.\n";
  rep.markdown = std::move(md);

  // Chart data: slowdown (time / none, guest clock; host wall for the gdb stub) per column and setting.
  std::string dat = "# column  off_ratio off_lo off_hi  on_ratio on_lo on_hi  (time / none; gdbstub: host wall)\n";
  std::set<std::string> seen;
  std::vector<std::string> cols;
  for (const auto& s : settings)
    for (const auto& c : s.columns)
      if (c != "none" && seen.insert(c).second) cols.push_back(c);
  std::sort(cols.begin(), cols.end(), [](const std::string& a, const std::string& b) {
    const auto& o = display_order();
    return std::find(o.begin(), o.end(), a) < std::find(o.begin(), o.end(), b);
  });
  for (const auto& c : cols) {
    dat += fmt::format("\"{}\"", column_title(c));
    for (const char* pti : {"off", "on"}) {
      const Setting* s = find_setting(settings, pti);
      const auto r = s ? ratio_ci(*s, c, "none", c == "gdbstub" ? "wall_s" : "guest_s") : std::nullopt;
      if (r) dat += fmt::format(" {:.5f} {:.5f} {:.5f}", r->point, r->lo, r->hi);
      else dat += " NaN NaN NaN";
    }
    dat += "\n";
  }
  rep.gnuplot_data = std::move(dat);
  rep.gnuplot_script = R"GP(# gnuplot table1.gp  (reads table1.dat, writes table1.svg)
set terminal svg size 1000,520 dynamic enhanced font 'sans,12' background rgb 'white'
set output 'table1.svg'
set title "hvtrace bench table1: time relative to QEMU without plugin (95% bootstrap CI)"
set ylabel "time / time(none)  (log scale)"
set logscale y
set grid ytics
set key top left
set xtics rotate by -25
set xrange [-0.6:*]
set offsets 0, 0.6, 0, 0
set datafile missing "NaN"
f(x) = 1
plot 'table1.dat' using ($0-0.12):2:3:4:xtic(1) with yerrorbars pt 7 ps 1.2 lc rgb '#1f77b4' title 'pti=off', \
     '' using ($0+0.12):5:6:7 with yerrorbars pt 5 ps 1.2 lc rgb '#d62728' title 'pti=on', \
     1 with lines dt 2 lc rgb 'gray' notitle
)GP";
  return rep;
}

std::vector<std::string> check_table1_counts(const json& results) {
  std::vector<std::string> bad;
  for (const auto& s : settings_of(results)) {
    for (unsigned r = 0; r < s.rounds; ++r) {
      const auto at = [&](const std::string& col, const char* key) {
        const auto v = s.series(col, key);
        return r < v.size() ? v[r] : kNaN;
      };
      for (const auto& c : s.columns) {
        auto it = s.runs.find(c);
        if (it == s.runs.end() || !it->second.count(r)) bad.push_back(fmt::format("pti={} round {}: {} did not run", s.pti, r, c));
        else if (!it->second.at(r).value("ok", false))
          bad.push_back(fmt::format("pti={} round {}: {} failed: {}", s.pti, r, c, it->second.at(r).value("error", "?")));
      }
      std::optional<double> ref;
      std::string ref_col;
      for (const char* m : {"m5", "m4", "m3", "m2"}) {
        if (!s.has(m)) continue;
        const double v = at(m, "monitored_calls");
        if (std::isnan(v)) continue;
        if (!ref) {
          ref = v;
          ref_col = m;
        } else if (v != *ref) {
          bad.push_back(fmt::format("pti={} round {}: {} saw {} monitored calls of the shell, {} saw {:.0f}", s.pti, r, m, v,
                                    ref_col, *ref));
        }
        if (v <= 0) bad.push_back(fmt::format("pti={} round {}: {} saw no monitored call", s.pti, r, m));
      }
      if (s.has("m3") && s.has("m4")) {
        const double c3 = at("m3", "cr3_events"), c4 = at("m4", "cr3_events");
        if (!std::isnan(c3) && !std::isnan(c4) && !(c4 < c3))
          bad.push_back(fmt::format("pti={} round {}: method 4 delivered {} CR3 events, not fewer than method 3's {}", s.pti,
                                    r, c4, c3));
      }
      for (const char* c : {"none", "none2", "idle"}) {
        if (!s.has(c)) continue;
        const double e = at(c, "events_delivered");
        if (!std::isnan(e) && e != 0) bad.push_back(fmt::format("pti={} round {}: {} delivered {} events", s.pti, r, c, e));
      }
      if (s.has("gdbstub") && ref) {
        const double g = at("gdbstub", "monitored_calls");
        const auto it = s.runs.find("gdbstub");
        const bool partial = it != s.runs.end() && it->second.count(r) && it->second.at(r).value("partial", false);
        if (partial && !std::isnan(g) && g <= 0)
          bad.push_back(fmt::format("pti={} round {}: the gdb stub saw none of the shell's calls in its sample", s.pti, r));
        else if (!partial && !std::isnan(g) && g < *ref)
          bad.push_back(fmt::format("pti={} round {}: the gdb stub saw {} of the shell's monitored calls, fewer than {}'s {:.0f}",
                                    s.pti, r, g, ref_col, *ref));
      }
    }
  }
  return bad;
}

}  // namespace hvtrace::bench
