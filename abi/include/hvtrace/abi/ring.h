// The shared-memory event channel between the monitor (inside QEMU) and the monitoring side: one
// file, owner-only (0600), created by the monitor, mapped read-write by one consumer.
//
//   [ShmHeader, 4 KiB][RingHeader 0, 4 KiB][data 0, data_size][RingHeader 1]...   (one ring per vCPU)
//
// Each ring is single-producer (the vCPU thread) / single-consumer. head and tail are free-running
// 64-bit byte counters (never wrapped; offset = counter & (data_size-1)); producer fields and
// consumer fields sit on separate cache lines. Pairings (see spsc.hpp):
//   producer: write record bytes, then head.store(release)   ⟷ consumer: head.load(acquire), read bytes
//   consumer: read record bytes, then tail.store(release)    ⟷ producer: tail.load(acquire), overwrite
// Records are 8-byte aligned and never straddle the end of the data area: the producer fills the
// rest of the area with one PAD record and continues at offset 0. When a record does not fit, the
// producer drops it, counts it by cause, and emits one LOST record before the next record that fits.
// Every field here is fixed-width; the layout is checked by static_asserts, and any change to it
// bumps kAbiVersion.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hvtrace::abi {

inline constexpr std::uint32_t kAbiVersion = 4;  // 2: EventHeader::insns; 3: doors (int $0x80, sysenter,
                                                 // compat syscall), ABI/door/kernel GS base in syscall events,
                                                 // per-ABI syscall sets, consumer-violation and degraded-sync counts;
                                                 // 4: exits into signal handlers (ExitVia::kSignal, signo)
inline constexpr std::uint64_t kShmMagic = 0x314d48534543'5448ULL;  // "HTCESHM1" little-endian-ish tag
inline constexpr std::uint32_t kPageSize = 4096;
inline constexpr std::uint32_t kCacheLine = 64;
inline constexpr std::uint32_t kRecordAlign = 8;
inline constexpr std::uint32_t kMinRingBytes = 64 * 1024;
inline constexpr std::uint32_t kMaxRingBytes = 256 * 1024 * 1024;
inline constexpr std::uint32_t kDefaultRingBytes = 4 * 1024 * 1024;
inline constexpr std::uint32_t kMaxVcpus = 64;

// Every record in a ring starts with this header; `size` includes it and is a multiple of 8.
enum class RecordType : std::uint16_t {
  kPad = 0,            // filler up to the end of the data area; skip
  kLost = 1,           // LostRecord: events dropped before this point
  kCr3Write = 2,       // events.h
  kSyscallEntry = 3,
  kSyscallExit = 4,
  kBreakpoint = 5,
};
inline constexpr std::uint16_t kRecordTypeMax = 5;

// Flags in RecordHeader::flags.
inline constexpr std::uint16_t kFlagSync = 1u << 0;         // the vCPU waits for an ack of this record's seq
inline constexpr std::uint16_t kFlagSyncTimedOut = 1u << 1;  // set on the *next* record: the previous wait gave up
inline constexpr std::uint16_t kFlagSyncDegraded = 1u << 2;  // asked sync, sent async: the consumer stopped acking
                                                             // (kSyncDegradeAfter timeouts in a row); ends on re-attach

struct RecordHeader {
  std::uint16_t type;   // RecordType
  std::uint16_t flags;
  std::uint32_t size;   // bytes including this header, multiple of kRecordAlign
};
static_assert(sizeof(RecordHeader) == 8);

// Drop/loss causes, each counted in RingHeader::drops[].
enum class DropCause : std::uint32_t {
  kRingFull = 0,       // consumer too slow (async) — or detached
  kTooBig = 1,         // record larger than the ring allows (max_record)
  kNoConsumer = 2,     // event dropped because no consumer is attached and action needs one
  kBadTail = 3,        // the consumer's tail lay outside [head - data_size, head]: the ring was reset
  kCount = 4,
};

struct LostRecord {
  RecordHeader hdr;          // type kLost, size 32
  std::uint64_t lost;        // events dropped since the previous record that made it
  std::uint64_t first_seq;   // seq of the first dropped event
  std::uint64_t last_seq;    // seq of the last dropped event
};
static_assert(sizeof(LostRecord) == 32);

struct alignas(kPageSize) RingHeader {
  // --- static after creation (written by the monitor before publishing ShmHeader::ready) ---
  std::uint32_t vcpu;
  std::uint32_t data_size;        // power of two, >= kMinRingBytes
  std::uint64_t data_offset;      // from the start of the file
  std::uint32_t max_record;       // largest record the producer will write (<= data_size / 4)
  std::uint32_t reserved0;
  // Self-timing of the monitor's callbacks (plugin argument selftime=on; 0 otherwise), written by
  // the vCPU thread: how many trap callbacks ran and the host nanoseconds spent inside them.
  std::uint64_t cb_calls;
  std::uint64_t cb_ns;
  // Host nanoseconds this vCPU spent paused waiting for the consumer's ack of sync events (always
  // counted: the wait is already the slow path), written by the vCPU thread.
  std::uint64_t sync_wait_ns;
  // Entries of calls still in progress whose slot in the monitor's table of open calls went to a
  // newer entry (the table was full): each such call's exit is not delivered. Written by the vCPU
  // thread.
  std::uint64_t open_evicted;
  // System calls that entered the kernel through a door whose entry point was not yet known and
  // was not found where the monitor looked for it (monitor/doors.hpp detect_at): not delivered.
  // Written by the vCPU thread.
  std::uint64_t entries_missed;

  // --- producer line: written only by the vCPU thread ---
  alignas(kCacheLine) std::uint64_t head;     // free-running; store(release) after the record bytes
  std::uint64_t next_seq;                     // seq the next event will get (incl. dropped ones)
  std::uint64_t published;                    // records committed (excl. PAD and LOST)
  std::uint64_t lost_pending;                 // dropped, no LOST record written yet
  std::uint64_t lost_first_seq;
  std::uint64_t lost_records;                 // LOST records written
  std::uint32_t head_futex;                   // bumped + FUTEX_WAKE when consumer_waiting
  std::uint32_t reserved1;
  std::uint64_t sync_degraded;                // sync events sent async: the consumer stopped acking

  // --- drop and sync counters: written only by the vCPU thread ---
  alignas(kCacheLine) std::uint64_t drops[static_cast<std::size_t>(DropCause::kCount)];
  std::uint64_t sync_waits;        // synchronous events whose ack was awaited
  std::uint64_t sync_timeouts;     // waits that gave up (consumer slow, dead or gone)
  std::uint64_t sync_spin_acks;    // acks seen while spinning
  std::uint64_t sync_block_acks;   // acks seen after blocking on the futex

  // --- consumer line: written only by the consumer ---
  alignas(kCacheLine) std::uint64_t tail;     // free-running; store(release) after reading the record
  std::uint64_t ack_seq;                      // highest seq acked for sync records; store(release)
  std::uint32_t ack_futex;                    // bumped + FUTEX_WAKE by the consumer after ack_seq
  std::uint32_t consumer_waiting;             // consumer sleeps on head_futex
  std::uint32_t producer_waiting;             // written by the producer: it sleeps on ack_futex
  std::uint32_t reserved3;
};
static_assert(sizeof(RingHeader) == kPageSize);
static_assert(offsetof(RingHeader, head) == 64);
static_assert(offsetof(RingHeader, drops) == 128);
static_assert(offsetof(RingHeader, tail) == 192);
static_assert(offsetof(RingHeader, producer_waiting) == 192 + 24);

// Global counters and state at the start of the file.
struct alignas(kPageSize) ShmHeader {
  std::uint64_t magic;            // kShmMagic
  std::uint32_t abi_version;      // kAbiVersion
  std::uint32_t header_size;      // sizeof(ShmHeader)
  std::uint32_t ring_header_size; // sizeof(RingHeader)
  std::uint32_t n_rings;          // one per vCPU
  std::uint64_t file_size;
  std::uint32_t ready;            // store(release) 1 after every ring header is initialised
  std::uint32_t monitor_pid;
  std::uint64_t syscall_entry_va; // 64-bit `syscall` entry point (0 until detected); store(release)
  std::uint32_t generation;       // filter generation in force; store(release)
  std::uint32_t reserved0;
  std::uint64_t door_entry_va[4]; // kernel entry point of each Door (events.h), 0 until detected; store(release)
  std::uint64_t detect_rejected;  // door detections rejected (the kernel was entered by a fault, not the door)
  // icount=on only (0 otherwise): guest instructions executed, all vCPUs, copied from the inline
  // counters by the control thread every 50 ms. store(release)
  std::uint64_t guest_insns;
  // countchecks=on only (0 otherwise), copied like guest_insns: conditional checks the generated
  // code executed (every trap site's "is this armed?" test), and kernel blocks executed (what a
  // check at every kernel block start would cost). store(release)
  std::uint64_t cond_checks;
  std::uint64_t kernel_blocks;
  // Breakpoints take effect when the code at their address is translated again: a change of the
  // breakpoint table that adds an address bumps bp_serial (store(release) before the control reply),
  // and a code flush queued after it sets bp_in_force to that serial once it is done (store(release)).
  // bp_in_force >= the bp_serial read after ADD_BREAKPOINT's reply: that breakpoint fires.
  std::uint64_t bp_serial;
  std::uint64_t bp_in_force;
};
static_assert(sizeof(ShmHeader) == kPageSize);
static_assert(offsetof(ShmHeader, syscall_entry_va) == 40);

// Byte offset of ring i's header; its data follows right after the header.
constexpr std::uint64_t ring_header_offset(std::uint32_t i, std::uint32_t data_size) {
  return kPageSize + static_cast<std::uint64_t>(i) * (kPageSize + data_size);
}
constexpr std::uint64_t shm_file_size(std::uint32_t n_rings, std::uint32_t data_size) {
  return ring_header_offset(n_rings, data_size);
}

}  // namespace hvtrace::abi
