// The honeypot fleet (`hvtrace farm`): N watched guests, each behind one public SSH port, reset to
// a snapshot after every attacker. This header is the pure part: the port range, the per-VM state
// machine's names, the status record the supervisor writes (status.json, `farm status --json`)
// and the memory check done before anything starts.
#pragma once

#include "common/result.hpp"

#include <nlohmann/json.hpp>

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hvtrace::farm {

struct PortRange {
  std::uint16_t first = 0, last = 0;
  [[nodiscard]] std::size_t size() const { return static_cast<std::size_t>(last) - first + 1; }
};
// "2222-2229" or a single "2222"; ports 1..65535, first <= last.
[[nodiscard]] Result<PortRange> parse_port_range(std::string_view text);
// The range must hold at least `vms` ports; the farm uses the first `vms`.
[[nodiscard]] Result<void> check_port_count(const PortRange& r, unsigned vms);

// booting -> ready -> in_session -> resetting -> ready ...; any state -> booting again when QEMU
// dies (the VM is replaced); failed when a boot or reset cannot be done (the port stays closed).
enum class State { kBooting, kReady, kInSession, kResetting, kFailed };
[[nodiscard]] std::string_view state_name(State s);
[[nodiscard]] Result<State> parse_state(std::string_view s);

struct VmStatus {
  std::string name;
  std::uint16_t port = 0;       // public port (listen address:port)
  State state = State::kBooting;
  std::uint64_t sessions = 0;   // attackers served (connections proxied to the guest)
  std::uint64_t resets = 0;     // snapshot restores
  std::uint64_t replaced = 0;   // QEMU died and the VM was booted again
  double last_reset_unix = 0;   // when the last reset finished (UNIX seconds, 0: never)
  double last_reset_s = 0;      // how long it took
  std::uint64_t lost_events = 0;    // the monitor's lost events, summed over this VM's watchers
  std::uint64_t sync_timeouts = 0;  // synchronous waits that timed out, likewise
  pid_t qemu_pid = 0;
  std::string error;            // why it is failed, or the last replacement's cause
};

struct FarmStatus {
  std::string name;             // the VMs' name prefix
  pid_t supervisor_pid = 0;
  std::string listen;           // address the public ports listen on
  std::string output_dir;       // sessions and farm.jsonl
  std::string sensor;
  double started_unix = 0;
  std::vector<VmStatus> vms;
};

[[nodiscard]] nlohmann::json to_json(const FarmStatus& s);
[[nodiscard]] Result<FarmStatus> status_from_json(std::string_view text);
// Header + aligned columns for people.
[[nodiscard]] std::string format_table(const FarmStatus& s);

// What one farm VM needs beside its guest RAM: QEMU and the TCG translation cache, the snapshot
// (about half the guest's RAM), the watcher.
inline constexpr unsigned kOverheadMib = 384;
// Error if `vms` guests of `guest_mib` each do not fit in `available_kib` (MemAvailable).
[[nodiscard]] Result<void> check_memory(unsigned vms, unsigned guest_mib, std::uint64_t available_kib);
// MemAvailable from /proc/meminfo, in KiB.
[[nodiscard]] Result<std::uint64_t> mem_available_kib();

}  // namespace hvtrace::farm
