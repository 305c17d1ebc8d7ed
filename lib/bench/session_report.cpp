#include "bench/session_report.hpp"

#include "bench/stats.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <optional>

namespace hvtrace::bench {

namespace {

using nlohmann::json;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

const std::vector<std::string>& arm_order() {
  static const std::vector<std::string> order = {"none", "idle", "neighbour", "session", "publish"};
  return order;
}

std::string arm_title(const std::string& a) {
  static const std::map<std::string, std::string> t = {{"none", "no plugin (2nd guest)"},
                                                       {"idle", "unwatched (monitor idle)"},
                                                       {"neighbour", "unwatched + busy host thread"},
                                                       {"session", "hvtrace session --follow"},
                                                       {"publish", "session --follow --publish"}};
  const auto it = t.find(a);
  return it == t.end() ? a : it->second;
}

bool watched(const std::string& arm) { return arm == "session" || arm == "publish"; }

double num(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : kNaN;
}

// Per arm, one value per round (NaN where the run failed or lacks the key).
std::vector<double> series(const json& results, const std::string& arm, const char* key) {
  const unsigned rounds = results.value("config", json::object()).value("rounds", 0u);
  std::vector<double> v(rounds, kNaN);
  for (const auto& r : results.value("runs", json::array())) {
    const unsigned round = r.value("round", 0u);
    if (r.value("arm", "") == arm && r.value("ok", false) && round < rounds) v[round] = num(r, key);
  }
  return v;
}

std::vector<double> ok_values(const std::vector<double>& v) {
  std::vector<double> out;
  for (double x : v)
    if (!std::isnan(x)) out.push_back(x);
  return out;
}

std::string cell(const std::vector<double>& v, const char* f = "{:.2f}") {
  const Summary s = summarize(v);
  if (s.n == 0) return "–";
  if (s.n == 1 || s.min == s.max) return fmt::format(fmt::runtime(f), s.median);
  return fmt::format("{} [{}–{}]", fmt::format(fmt::runtime(f), s.median), fmt::format(fmt::runtime(f), s.min),
                     fmt::format(fmt::runtime(f), s.max));
}

std::optional<Interval> ratio(const json& results, const std::string& num_arm, const std::string& den_arm, const char* key) {
  return bootstrap_ratio(series(results, num_arm, key), series(results, den_arm, key));
}

std::vector<std::string> arms_of(const json& results) {
  std::vector<std::string> out;
  for (const auto& a : arm_order())
    for (const auto& r : results.value("runs", json::array()))
      if (r.value("arm", "") == a) {
        out.push_back(a);
        break;
      }
  return out;
}

}  // namespace

std::string make_session_report(const json& results) {
  const json cfg = results.value("config", json::object());
  const auto arms = arms_of(results);
  const auto has = [&](const std::string& a) { return std::find(arms.begin(), arms.end(), a) != arms.end(); };
  std::string md = "# hvtrace bench session\n\n";
  md += fmt::format(
      "One guest with the monitor; in every run the scripted attacker (`scripts/attacker`: OpenSSH's `ssh -tt` through a "
      "pseudo-terminal, password login, keys typed {} ms apart) logs in and types {} command lines, among them "
      "`jansson-workload {}` (unzip + tcc compile of jansson 2.14), then `exit`. Arms, interleaved per round with the order "
      "rotated: **idle** — the unwatched run: the monitor plugin loaded in QEMU but nobody attached (nothing armed, nothing "
      "delivered); {}**session** — `hvtrace session --follow` watching the SSH server and everything below it; **publish** — "
      "the same plus `--publish` to a local nats-server with JetStream{}. QEMU CPU: utime+stime of the QEMU process from the "
      "client's start to its exit (login, typing, workload, logout); guest clock: the workload's own time in the guest. "
      "Ratios: mean over rounds / mean over rounds, 95% bootstrap interval over rounds (resampled as pairs). {} round(s).\n\n",
      cfg.value("typing", "?"), cfg.value("commands_typed", 0u), cfg.value("iterations", 0u),
      has("neighbour") ? fmt::format("**neighbour** — unwatched, with a host thread beside QEMU that writes through 8 MiB for "
                                     "{} µs every millisecond and watches nothing (what any busy process beside QEMU costs it "
                                     "on this host); ", cfg.value("neighbour_us", 0u))
                       : std::string(),
      has("none") ? "; **none** — a second guest without the plugin" : "", cfg.value("rounds", 0u));
  md += fmt::format("Command: `{}`\n\n", results.value("command", ""));

  md += "| |";
  for (const auto& a : arms) md += fmt::format(" {} |", arm_title(a));
  md += "\n|---|";
  for (std::size_t i = 0; i < arms.size(); ++i) md += "---|";
  md += "\n";
  const auto row = [&](const std::string& label, const std::function<std::string(const std::string&)>& f) {
    md += "| " + label + " |";
    for (const auto& a : arms) md += " " + f(a) + " |";
    md += "\n";
  };
  row("runs ok", [&](const std::string& a) {
    unsigned ok = 0, all = 0;
    for (const auto& r : results.value("runs", json::array()))
      if (r.value("arm", "") == a) {
        ++all;
        ok += r.value("ok", false) ? 1 : 0;
      }
    return fmt::format("{}/{}", ok, all);
  });
  row("QEMU CPU s, median [min–max]", [&](const std::string& a) { return cell(ok_values(series(results, a, "qemu_cpu_s"))); });
  row("guest clock s (workload)", [&](const std::string& a) { return cell(ok_values(series(results, a, "guest_s"))); });
  row("host wall s (session)", [&](const std::string& a) { return cell(ok_values(series(results, a, "wall_s"))); });
  const bool counted = std::any_of(arms.begin(), arms.end(), [&](const std::string& a) { return !ok_values(series(results, a, "guest_insns")).empty(); });
  if (counted) {
    row("guest instructions, millions", [&](const std::string& a) {
      auto v = ok_values(series(results, a, "guest_insns"));
      for (auto& x : v) x /= 1e6;
      return v.empty() ? std::string("–") : cell(v, "{:.0f}");
    });
    row("guest instructions vs idle", [&](const std::string& a) {
      return a == "idle" ? "–" : percent_text(ratio(results, a, "idle", "guest_insns"));
    });
    // The monitor's own time (selftime=on: two clock reads around each callback) without the
    // waits for synchronous acks, against the unwatched run's QEMU CPU; and the guest's pauses.
    row("guest paused for sync acks s", [&](const std::string& a) {
      const auto v = ok_values(series(results, a, "sync_wait_s"));
      return v.empty() || a == "idle" ? std::string("–") : cell(v, "{:.3f}");
    });
    row("monitor callbacks run", [&](const std::string& a) {
      const auto v = ok_values(series(results, a, "monitor_callbacks"));
      return v.empty() ? std::string("–") : cell(v, "{:.0f}");
    });
    row("monitor callbacks s (selftime, waits excluded)", [&](const std::string& a) {
      const auto v = ok_values(series(results, a, "monitor_callback_s"));
      return v.empty() ? std::string("–") : cell(v, "{:.3f}");
    });
    row("monitor callbacks vs idle QEMU CPU", [&](const std::string& a) {
      const auto cb = ok_values(series(results, a, "monitor_callback_s"));
      const auto idle = ok_values(series(results, "idle", "qemu_cpu_s"));
      if (a == "idle" || cb.empty() || idle.empty()) return std::string("–");
      return fmt::format("{:.2f}%", 100.0 * summarize(cb).median / summarize(idle).median);
    });
  }
  row("QEMU CPU vs idle", [&](const std::string& a) { return a == "idle" ? "–" : percent_text(ratio(results, a, "idle", "qemu_cpu_s")); });
  row("guest clock vs idle", [&](const std::string& a) { return a == "idle" ? "–" : percent_text(ratio(results, a, "idle", "guest_s")); });
  if (has("neighbour")) {
    // What a busy process beside QEMU costs it without any watching, and what watching costs over that.
    row("host CPU beside QEMU s (watcher / neighbour thread)", [&](const std::string& a) {
      const auto v = ok_values(series(results, a, a == "neighbour" ? "neighbour_cpu_s" : "watcher_window_cpu_s"));
      return v.empty() ? std::string("–") : cell(v);
    });
    row("QEMU CPU vs neighbour", [&](const std::string& a) {
      return watched(a) ? percent_text(ratio(results, a, "neighbour", "qemu_cpu_s")) : std::string("–");
    });
  }
  row("QEMU CPU vs session", [&](const std::string& a) {
    return a == "publish" ? percent_text(ratio(results, a, "session", "qemu_cpu_s")) : std::string("–");
  });
  const auto watched_cell = [&](const char* key, const char* f) {
    return [&results, key, f](const std::string& a) { return watched(a) ? cell(ok_values(series(results, a, key)), f) : std::string("–"); };
  };
  row("sessions / commands recorded", [&](const std::string& a) {
    if (!watched(a)) return std::string("–");
    return fmt::format("{} / {}", cell(ok_values(series(results, a, "sessions")), "{:.0f}"),
                       cell(ok_values(series(results, a, "commands")), "{:.0f}"));
  });
  row("events delivered to the watcher", watched_cell("events_delivered", "{:.0f}"));
  row("MiB copied through the rings", watched_cell("ring_mib", "{:.2f}"));
  row("synchronous pauses", watched_cell("sync_pauses", "{:.0f}"));
  row("events lost", watched_cell("lost", "{:.0f}"));
  row("--follow latency, median ms", watched_cell("follow_median_ms", "{:.1f}"));
  row("--follow latency, max ms", watched_cell("follow_max_ms", "{:.1f}"));
  row("watcher CPU s", watched_cell("watcher_cpu_s", "{:.2f}"));
  row("watcher peak RSS MiB", [&](const std::string& a) {
    if (!watched(a)) return std::string("–");
    std::vector<double> v;
    for (double x : ok_values(series(results, a, "watcher_peak_rss_kib"))) v.push_back(x / 1024);
    return cell(v, "{:.1f}");
  });
  row("messages published / acked", [&](const std::string& a) {
    if (a != "publish") return std::string("–");
    return fmt::format("{} / {}", cell(ok_values(series(results, a, "published")), "{:.0f}"),
                       cell(ok_values(series(results, a, "acked")), "{:.0f}"));
  });

  // The targets, each judged on its whole interval (or on every sample); an interval needs rounds.
  const unsigned rounds = cfg.value("rounds", 0u);
  const auto judge = [rounds](const std::optional<Interval>& i, double target) {
    return rounds >= 3 ? verdict_text(i, target) : fmt::format("undecidable ({} round(s): no interval)", rounds);
  };
  md += "\n## Targets (issue 9; issue 11's publish target)\n\n| target | measured | verdict |\n|---|---|---|\n";
  const auto q = ratio(results, "session", "idle", "qemu_cpu_s");
  md += fmt::format("| watching costs ≤ 3% QEMU CPU over the unwatched run | {} | {} |\n", percent_text(q), judge(q, 1.03));
  double lost = 0, max_lat = kNaN, followed = 0;
  bool any_watched = false;
  for (const auto& r : results.value("runs", json::array())) {
    if (!watched(r.value("arm", "")) || !r.value("ok", false)) continue;
    any_watched = true;
    lost += r.value("lost", 0.0);
    followed += r.value("follow_count", 0.0);
    const double m = num(r, "follow_max_ms");
    if (!std::isnan(m)) max_lat = std::isnan(max_lat) ? m : std::max(max_lat, m);
  }
  md += fmt::format("| zero events lost | {} | {} |\n", any_watched ? fmt::format("{:.0f} lost over every watched run", lost) : "–",
                    !any_watched ? "not measured" : lost == 0 ? "**met**" : "**not met**");
  md += fmt::format("| a command appears in --follow ≤ 100 ms after its exec | {} | {} |\n",
                    std::isnan(max_lat) ? "–"
                                        : fmt::format("max {:.1f} ms over {:.0f} commands (from the Enter key's write, which "
                                                      "precedes the exec)",
                                                      max_lat, followed),
                    std::isnan(max_lat) ? "not measured" : max_lat <= 100 ? "**met**" : "**not met**");
  if (const auto it = results.find("rss_run"); it != results.end() && it->value("ok", false)) {
    const auto& rr = *it;
    // Judged on RssAnon (the watcher's own memory) when recorded; VmRSS also counts the guest RAM
    // pages it has read through its shared mapping, bounded by the guest's size.
    const bool anon = rr.value("anon_10s_kib", 0.0) > 0;
    const char* key = anon ? "anon" : "rss";
    const double at10 = rr.value(fmt::format("{}_10s_kib", key), 0.0), mx = rr.value(fmt::format("{}_max_kib", key), 0.0),
                 end = rr.value(fmt::format("{}_end_kib", key), 0.0);
    std::string measured = fmt::format("{}: {:.1f} MiB at 10 s, {:.1f} MiB at the end, max {:.1f} MiB (+{:.1f}% over 10 s)",
                                       anon ? "RssAnon" : "VmRSS", at10 / 1024, end / 1024, mx / 1024, at10 > 0 ? (mx / at10 - 1) * 100 : 0.0);
    if (anon)
      measured += fmt::format("; VmRSS {:.1f} / {:.1f} / max {:.1f} MiB", rr.value("rss_10s_kib", 0.0) / 1024,
                              rr.value("rss_end_kib", 0.0) / 1024, rr.value("rss_max_kib", 0.0) / 1024);
    md += fmt::format("| watcher RSS flat over a {:g}-minute session with continuous output | {} | {} |\n", rr.value("minutes", 0.0),
                      measured, at10 > 0 && mx <= at10 * 1.05 ? "**met** (max ≤ 10-s value + 5%)" : "**not met** (max > 10-s value + 5%)");
  } else {
    md += "| watcher RSS flat over a 10-minute session with continuous output | – | not measured |\n";
  }
  const auto p = ratio(results, "publish", "session", "qemu_cpu_s");
  md += fmt::format("| publishing adds ≤ 1% QEMU CPU over the same watched session | {} | {} |\n", percent_text(p), judge(p, 1.01));

  if (const auto it = results.find("rss_run"); it != results.end()) {
    const auto& rr = *it;
    md += fmt::format("\n## RSS run\n\n{}\n", rr.value("ok", false) ? "" : fmt::format("FAILED: {}\n", rr.value("error", "?")));
    md += fmt::format("`hvtrace session --follow` watched one session for {:g} min ({:.0f} s of client session) in which a shell "
                      "loop printed directory listings (ls -laR /usr/include) and /etc/passwd and ran the jansson workload again and again; the "
                      "watcher's VmRSS and RssAnon sampled every second (rss.tsv). Sessions / commands recorded: {} / {}; events delivered: "
                      "{}; lost: {}; bytes the client's terminal received: {}; watcher CPU: {:.1f} s.\n",
                      rr.value("minutes", 0.0), rr.value("wall_s", 0.0), rr.value("sessions", 0), rr.value("commands", 0),
                      rr.value("events_delivered", 0.0), rr.value("lost", 0.0), rr.value("output_bytes", 0.0), rr.value("watcher_cpu_s", 0.0));
  }
  return md;
}

std::vector<std::string> check_session_counts(const json& results) {
  std::vector<std::string> bad;
  const unsigned typed = results.value("config", json::object()).value("commands_typed", 0u);
  for (const auto& r : results.value("runs", json::array())) {
    const std::string who = fmt::format("round {} {}", r.value("round", 0u) + 1, r.value("arm", "?"));
    if (!r.value("ok", false)) {
      bad.push_back(fmt::format("{}: failed: {}", who, r.value("error", "?")));
      continue;
    }
    if (!watched(r.value("arm", ""))) continue;
    if (r.value("sessions", -1.0) != 1) bad.push_back(fmt::format("{}: {} sessions recorded, not 1", who, r.value("sessions", -1.0)));
    if (r.value("commands", -1.0) != typed)
      bad.push_back(fmt::format("{}: {} commands recorded, {} typed", who, r.value("commands", -1.0), typed));
    if (r.value("follow_count", -1.0) != typed)
      bad.push_back(fmt::format("{}: --follow timed {} commands, {} typed", who, r.value("follow_count", -1.0), typed));
    if (r.value("lost", -1.0) != 0) bad.push_back(fmt::format("{}: {} events lost", who, r.value("lost", -1.0)));
    if (r.value("arm", "") == "publish" && (r.value("publish_dropped", -1.0) != 0 || r.value("spool_left", -1.0) != 0 ||
                                            r.value("acked", -1.0) < r.value("published", 0.0) || r.value("published", 0.0) <= 0))
      bad.push_back(fmt::format("{}: publishing incomplete: {} published, {} acked, {} dropped, {} left in the spool", who,
                                r.value("published", -1.0), r.value("acked", -1.0), r.value("publish_dropped", -1.0),
                                r.value("spool_left", -1.0)));
  }
  if (const auto it = results.find("rss_run"); it != results.end()) {
    if (!it->value("ok", false)) bad.push_back(fmt::format("RSS run failed: {}", it->value("error", "?")));
    else if (it->value("lost", -1.0) != 0) bad.push_back(fmt::format("RSS run: {} events lost", it->value("lost", -1.0)));
  }
  return bad;
}

}  // namespace hvtrace::bench
