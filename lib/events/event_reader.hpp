// Reading the monitor's event rings (abi/ring.h) from the monitoring side: maps the rings file,
// consumes each vCPU's ring with the shared SPSC algorithm, and decodes records into Event values,
// validating every size against the record that carries it (the producer runs inside QEMU and the
// data it copies comes from a hostile guest). Synchronous records are acknowledged after the
// handler returns, which is when the waiting vCPU resumes. Loss is never silent: LOST records
// arrive as events of type kLost and the per-cause counters are in stats().
#pragma once

#include "common/result.hpp"
#include "common/types.hpp"

#include "hvtrace/abi/events.h"
#include "hvtrace/abi/spsc.hpp"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hvtrace::events {

struct Capture {
  unsigned arg = 0;
  abi::CaptureKind kind = abi::CaptureKind::kString;
  std::uint16_t flags = 0;
  std::uint64_t true_len = 0;
  std::string data;   // for kArgv: the strings each followed by '\0'
  [[nodiscard]] bool truncated() const { return (flags & abi::kCaptureTruncated) != 0; }
  [[nodiscard]] std::vector<std::string> argv() const;
};

struct Event {
  abi::RecordType type = abi::RecordType::kPad;
  std::uint16_t flags = 0;
  unsigned ring = 0;              // == vCPU
  std::uint64_t seq = 0;
  std::uint64_t time_ns = 0;
  std::uint64_t insns = 0;        // guest instruction count of this vCPU (0 unless icount=on)
  std::uint32_t generation = 0;
  // Exactly one of these is meaningful, by type.
  abi::Cr3WriteEvent cr3{};
  abi::SyscallEntryEvent entry{};
  abi::SyscallExitEvent exit{};
  abi::BreakpointEvent bp{};
  abi::LostRecord lost{};
  std::vector<Capture> captures;

  [[nodiscard]] bool sync() const { return (flags & abi::kFlagSync) != 0; }
  // Syscall entries and exits: the table the number indexes and the door it came through.
  [[nodiscard]] abi::SyscallAbi syscall_abi() const;
  [[nodiscard]] abi::Door door() const;
  [[nodiscard]] Dtb dtb() const;   // of the process the event belongs to (new CR3 for kCr3Write)
};

struct RingStats {
  std::uint64_t published = 0, lost_records = 0, lost_pending = 0;
  std::uint64_t bytes = 0;                 // record bytes the monitor wrote into the ring (PAD and LOST included)
  std::uint64_t drops[static_cast<std::size_t>(abi::DropCause::kCount)] = {};
  std::uint64_t sync_waits = 0, sync_timeouts = 0, sync_degraded = 0;
  std::uint64_t sync_wait_ns = 0;          // time the vCPU spent paused for sync events
  std::uint64_t cb_calls = 0, cb_ns = 0;   // monitor self-timing (selftime=on)
  std::uint64_t open_evicted = 0;          // calls whose exit was not delivered: the monitor's open-call table was full
  std::uint64_t entries_missed = 0;        // calls not delivered: through a door whose entry point was not yet learned
  [[nodiscard]] std::uint64_t dropped() const;
};

class EventReader {
 public:
  // Map the rings file the monitor created (it must be owned by us and not writable by others),
  // waiting up to `wait` for it to appear and become ready.
  [[nodiscard]] static Result<std::unique_ptr<EventReader>> open(const std::filesystem::path& path,
                                                                 std::chrono::milliseconds wait = std::chrono::milliseconds{0});
  ~EventReader();
  EventReader(const EventReader&) = delete;
  EventReader& operator=(const EventReader&) = delete;

  [[nodiscard]] unsigned rings() const { return static_cast<unsigned>(consumers_.size()); }

  // Hand every record available now to `fn`, acking sync records after fn returns: with several
  // rings, in the order the monitor saw them (its clock at each event), so an exit that came on
  // another vCPU than its entry follows it. Stops after `max` events. Returns the number handled
  // or the first corrupt ring.
  Result<std::size_t> poll(const std::function<void(const Event&)>& fn, std::size_t max = SIZE_MAX);

  // Wait until some ring has data or timeout passes (spins `spin` first, then sleeps on the
  // futex of ring 0 for a single-vCPU VM, or polls in 200 µs steps otherwise). urgent_only:
  // the monitor wakes this sleep only for a record a vCPU waits on (a sync event); ordinary
  // records are found at the timeout (a consumer that polls while records flow).
  bool wait(std::chrono::microseconds timeout, abi::WaitMode mode = abi::WaitMode::kAdaptive,
            std::chrono::microseconds spin = std::chrono::microseconds{50}, bool urgent_only = false);

  // Do not ack sync records automatically (tests that play a dead or slow consumer).
  void set_auto_ack(bool on) { auto_ack_ = on; }
  void ack(unsigned ring, std::uint64_t seq) { consumers_.at(ring).ack(seq); }

  [[nodiscard]] RingStats stats(unsigned ring) const;
  [[nodiscard]] std::uint64_t syscall_entry_va() const;
  [[nodiscard]] std::uint64_t door_entry_va(abi::Door d) const;   // 0 until the monitor learned it
  [[nodiscard]] std::uint64_t detect_rejected() const;           // kernel entries by a fault, not a door
  [[nodiscard]] std::uint32_t generation() const;
  // Breakpoint table changes that needed a code flush so far, and those whose flush is done
  // (ShmHeader::bp_serial / bp_in_force): a breakpoint added before reading bp_serial() fires once
  // bp_in_force() reaches it.
  [[nodiscard]] std::uint64_t bp_serial() const;
  [[nodiscard]] std::uint64_t bp_in_force() const;
  // Guest instructions executed so far, all vCPUs, when the monitor runs with icount=on (else 0);
  // refreshed every 50 ms.
  [[nodiscard]] std::uint64_t guest_insns() const;
  // With countchecks=on (else 0), refreshed every 50 ms: conditional checks the monitor's generated
  // code executed, and kernel blocks executed (a check at every kernel block start would run that
  // many).
  [[nodiscard]] std::uint64_t cond_checks() const;
  [[nodiscard]] std::uint64_t kernel_blocks() const;

 private:
  EventReader() = default;
  [[nodiscard]] std::uint64_t header_counter(std::uint64_t abi::ShmHeader::* field) const;
  Result<bool> next(unsigned ring, Event* out);
  std::optional<unsigned> oldest_ring();   // the ring whose next record is oldest; a corrupt one first

  std::uint8_t* base_ = nullptr;
  std::size_t size_ = 0;
  std::vector<abi::RingConsumer> consumers_;
  bool auto_ack_ = true;
};

// Names used in every output: "x86_64", "i386", "x32"; "syscall", "int80", "sysenter", "syscall32".
[[nodiscard]] std::string_view abi_name(abi::SyscallAbi a);
[[nodiscard]] std::string_view door_name(abi::Door d);

// Decode one record (header included, `size` bytes). Exposed for tests and fuzzing.
[[nodiscard]] Result<Event> decode_record(const std::uint8_t* rec, std::size_t size);

}  // namespace hvtrace::events
