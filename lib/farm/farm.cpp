#include "farm/farm.hpp"

#include <fmt/core.h>

#include <charconv>
#include <fstream>
#include <sstream>

namespace hvtrace::farm {

namespace {
Result<std::uint16_t> parse_port(std::string_view t, std::string_view whole) {
  unsigned v = 0;
  const auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  if (t.empty() || ec != std::errc() || p != t.data() + t.size() || v < 1 || v > 65535)
    return make_error("--ssh-ports '{}': expected PORT or FIRST-LAST with ports 1-65535", whole);
  return static_cast<std::uint16_t>(v);
}
}  // namespace

Result<PortRange> parse_port_range(std::string_view text) {
  const auto dash = text.find('-');
  auto first = parse_port(text.substr(0, dash), text);
  if (!first) return std::move(first).error();
  auto last = dash == std::string_view::npos ? first : parse_port(text.substr(dash + 1), text);
  if (!last) return std::move(last).error();
  if (*last < *first) return make_error("--ssh-ports '{}': the last port is below the first", text);
  return PortRange{*first, *last};
}

Result<void> check_port_count(const PortRange& r, unsigned vms) {
  if (vms == 0) return make_error("--vms must be at least 1");
  if (r.size() < vms)
    return make_error("--ssh-ports {}-{} has {} port(s) for {} VMs: give a range of at least {} ports", r.first, r.last,
                      r.size(), vms, vms);
  return {};
}

std::string_view state_name(State s) {
  switch (s) {
    case State::kBooting: return "booting";
    case State::kReady: return "ready";
    case State::kInSession: return "in_session";
    case State::kResetting: return "resetting";
    case State::kFailed: return "failed";
  }
  return "failed";
}

Result<State> parse_state(std::string_view s) {
  for (State x : {State::kBooting, State::kReady, State::kInSession, State::kResetting, State::kFailed})
    if (state_name(x) == s) return x;
  return make_error("unknown farm VM state '{}'", s);
}

nlohmann::json to_json(const FarmStatus& s) {
  nlohmann::json vms = nlohmann::json::array();
  for (const auto& v : s.vms)
    vms.push_back({{"name", v.name},
                   {"port", v.port},
                   {"state", state_name(v.state)},
                   {"sessions", v.sessions},
                   {"resets", v.resets},
                   {"replaced", v.replaced},
                   {"last_reset_unix", v.last_reset_unix},
                   {"last_reset_s", v.last_reset_s},
                   {"lost_events", v.lost_events},
                   {"sync_timeouts", v.sync_timeouts},
                   {"qemu_pid", v.qemu_pid},
                   {"error", v.error}});
  return {{"name", s.name},         {"supervisor_pid", s.supervisor_pid}, {"listen", s.listen},
          {"output_dir", s.output_dir}, {"sensor", s.sensor},             {"started_unix", s.started_unix},
          {"vms", vms}};
}

Result<FarmStatus> status_from_json(std::string_view text) {
  try {
    const auto j = nlohmann::json::parse(text);
    FarmStatus s;
    s.name = j.at("name").get<std::string>();
    s.supervisor_pid = j.at("supervisor_pid").get<pid_t>();
    s.listen = j.at("listen").get<std::string>();
    s.output_dir = j.at("output_dir").get<std::string>();
    s.sensor = j.at("sensor").get<std::string>();
    s.started_unix = j.at("started_unix").get<double>();
    for (const auto& v : j.at("vms")) {
      VmStatus x;
      x.name = v.at("name").get<std::string>();
      x.port = v.at("port").get<std::uint16_t>();
      auto st = parse_state(v.at("state").get<std::string>());
      if (!st) return std::move(st).error();
      x.state = *st;
      x.sessions = v.at("sessions").get<std::uint64_t>();
      x.resets = v.at("resets").get<std::uint64_t>();
      x.replaced = v.at("replaced").get<std::uint64_t>();
      x.last_reset_unix = v.at("last_reset_unix").get<double>();
      x.last_reset_s = v.at("last_reset_s").get<double>();
      x.lost_events = v.at("lost_events").get<std::uint64_t>();
      x.sync_timeouts = v.at("sync_timeouts").get<std::uint64_t>();
      x.qemu_pid = v.at("qemu_pid").get<pid_t>();
      x.error = v.at("error").get<std::string>();
      s.vms.push_back(std::move(x));
    }
    return s;
  } catch (const std::exception& e) {
    return make_error("malformed farm status: {}", e.what());
  }
}

std::string format_table(const FarmStatus& s) {
  std::string out = fmt::format("farm '{}' (supervisor pid {}), listening on {}, sessions in {}\n", s.name, s.supervisor_pid,
                                s.listen, s.output_dir);
  out += fmt::format("{:<16} {:>5} {:<10} {:>8} {:>6} {:>8} {:<20} {:>8} {:>6} {:>8}\n", "VM", "PORT", "STATE", "SESSIONS",
                     "RESETS", "REPLACED", "LAST-RESET", "RESET-S", "LOST", "SYNC-TO");
  for (const auto& v : s.vms) {
    std::string when = "-";
    if (v.last_reset_unix > 0) {
      const std::time_t t = static_cast<std::time_t>(v.last_reset_unix);
      std::tm tm{};
      gmtime_r(&t, &tm);
      char buf[32];
      std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
      when = buf;
    }
    out += fmt::format("{:<16} {:>5} {:<10} {:>8} {:>6} {:>8} {:<20} {:>8} {:>6} {:>8}\n", v.name, v.port, state_name(v.state),
                       v.sessions, v.resets, v.replaced, when, v.last_reset_unix > 0 ? fmt::format("{:.2f}", v.last_reset_s) : "-",
                       v.lost_events, v.sync_timeouts);
    if (!v.error.empty()) out += fmt::format("  {}: {}\n", v.name, v.error);
  }
  return out;
}

Result<void> check_memory(unsigned vms, unsigned guest_mib, std::uint64_t available_kib) {
  const std::uint64_t need_kib = static_cast<std::uint64_t>(vms) * (guest_mib + kOverheadMib) * 1024;
  if (need_kib > available_kib)
    return make_error("{} VMs need about {} MiB ({} MiB guest RAM + {} MiB QEMU, snapshot and watcher each) but only {} MiB "
                      "is available (MemAvailable); use fewer --vms",
                      vms, need_kib / 1024, guest_mib, kOverheadMib, available_kib / 1024);
  return {};
}

Result<std::uint64_t> mem_available_kib() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t value = 0;
  std::string unit;
  while (in >> key >> value >> unit)
    if (key == "MemAvailable:") return value;
  return make_error("cannot read MemAvailable from /proc/meminfo");
}

}  // namespace hvtrace::farm
