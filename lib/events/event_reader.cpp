// EventReader: see event_reader.hpp.
#include "events/event_reader.hpp"

#include "hvtrace/abi/control.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <thread>

namespace hvtrace::events {

namespace {

template <typename T>
Result<T> read_body(const std::uint8_t* rec, std::size_t size, const char* what) {
  if (size < sizeof(T)) return make_error("{} record of {} bytes, needs {}", what, size, sizeof(T));
  T t;
  std::memcpy(&t, rec, sizeof t);
  return t;
}

Result<void> read_captures(const std::uint8_t* p, std::size_t left, std::uint32_t n, std::vector<Capture>* out) {
  if (n > abi::kMaxCaptures) return make_error("{} captures (at most {})", n, abi::kMaxCaptures);
  for (std::uint32_t i = 0; i < n; ++i) {
    if (left < sizeof(abi::Capture)) return make_error("capture {} header past the record end", i);
    abi::Capture c;
    std::memcpy(&c, p, sizeof c);
    p += sizeof c;
    left -= sizeof c;
    const std::size_t padded = abi::align_record(c.data_len);
    if (c.data_len > abi::kMaxSnapLen * 4 || padded > left) return make_error("capture {} data of {} bytes past the record end", i, c.data_len);
    if (c.kind < 1 || c.kind > 3 || c.arg > 5) return make_error("capture {}: bad kind {} or argument {}", i, c.kind, c.arg);
    Capture cap;
    cap.arg = c.arg;
    cap.kind = static_cast<abi::CaptureKind>(c.kind);
    cap.flags = c.flags;
    cap.true_len = c.true_len;
    cap.data.assign(reinterpret_cast<const char*>(p), c.data_len);
    out->push_back(std::move(cap));
    p += padded;
    left -= padded;
  }
  return {};
}

}  // namespace

std::vector<std::string> Capture::argv() const {
  std::vector<std::string> v;
  std::size_t start = 0;
  for (std::size_t i = 0; i < data.size(); ++i)
    if (data[i] == '\0') {
      v.push_back(data.substr(start, i - start));
      start = i + 1;
    }
  return v;
}

Dtb Event::dtb() const {
  switch (type) {
    case abi::RecordType::kCr3Write: return Dtb{abi::dtb_of_cr3(cr3.new_cr3)};
    case abi::RecordType::kSyscallEntry: return Dtb{abi::dtb_of_cr3(entry.cr3)};
    case abi::RecordType::kSyscallExit: return Dtb{abi::dtb_of_cr3(exit.cr3)};
    case abi::RecordType::kBreakpoint: return Dtb{abi::dtb_of_cr3(bp.cr3)};
    default: return Dtb{0};
  }
}

std::string_view abi_name(abi::SyscallAbi a) {
  switch (a) {
    case abi::SyscallAbi::kX86_64: return "x86_64";
    case abi::SyscallAbi::kI386: return "i386";
    case abi::SyscallAbi::kX32: return "x32";
    case abi::SyscallAbi::kCount: break;
  }
  return "?";
}

std::string_view door_name(abi::Door d) {
  switch (d) {
    case abi::Door::kSyscall64: return "syscall";
    case abi::Door::kInt80: return "int80";
    case abi::Door::kSysenter: return "sysenter";
    case abi::Door::kSyscallCompat: return "syscall32";
    case abi::Door::kCount: break;
  }
  return "?";
}

abi::SyscallAbi Event::syscall_abi() const {
  if (type == abi::RecordType::kSyscallEntry) return static_cast<abi::SyscallAbi>(entry.abi);
  if (type == abi::RecordType::kSyscallExit) return static_cast<abi::SyscallAbi>(exit.abi);
  return abi::SyscallAbi::kX86_64;
}

abi::Door Event::door() const {
  if (type == abi::RecordType::kSyscallEntry) return static_cast<abi::Door>(entry.door);
  if (type == abi::RecordType::kSyscallExit) return static_cast<abi::Door>(exit.door);
  return abi::Door::kSyscall64;
}

std::uint64_t RingStats::dropped() const {
  std::uint64_t n = 0;
  for (auto d : drops) n += d;
  return n;
}

Result<Event> decode_record(const std::uint8_t* rec, std::size_t size) {
  if (size < sizeof(abi::RecordHeader)) return make_error("record of {} bytes", size);
  abi::RecordHeader h;
  std::memcpy(&h, rec, sizeof h);
  Event e;
  e.type = static_cast<abi::RecordType>(h.type);
  e.flags = h.flags;
  auto common = [&](const abi::EventHeader& eh) {
    e.seq = eh.seq;
    e.time_ns = eh.time_ns;
    e.insns = eh.insns;
    e.generation = eh.generation;
  };
  switch (e.type) {
    case abi::RecordType::kLost: {
      auto r = read_body<abi::LostRecord>(rec, size, "LOST");
      if (!r) return r.error();
      e.lost = *r;
      e.seq = e.lost.first_seq;
      return e;
    }
    case abi::RecordType::kCr3Write: {
      auto r = read_body<abi::Cr3WriteEvent>(rec, size, "CR3");
      if (!r) return r.error();
      e.cr3 = *r;
      common(e.cr3.hdr);
      return e;
    }
    case abi::RecordType::kSyscallEntry: {
      auto r = read_body<abi::SyscallEntryEvent>(rec, size, "syscall entry");
      if (!r) return r.error();
      e.entry = *r;
      common(e.entry.hdr);
      if (e.entry.abi >= static_cast<std::uint8_t>(abi::SyscallAbi::kCount) ||
          e.entry.door >= static_cast<std::uint8_t>(abi::Door::kCount))
        return make_error("syscall entry: bad ABI {} or door {}", e.entry.abi, e.entry.door);
      if (auto c = read_captures(rec + sizeof(abi::SyscallEntryEvent), size - sizeof(abi::SyscallEntryEvent),
                                 e.entry.n_captures, &e.captures);
          !c)
        return c.error();
      return e;
    }
    case abi::RecordType::kSyscallExit: {
      auto r = read_body<abi::SyscallExitEvent>(rec, size, "syscall exit");
      if (!r) return r.error();
      e.exit = *r;
      if (e.exit.abi >= static_cast<std::uint8_t>(abi::SyscallAbi::kCount) ||
          e.exit.door >= static_cast<std::uint8_t>(abi::Door::kCount))
        return make_error("syscall exit: bad ABI {} or door {}", e.exit.abi, e.exit.door);
      common(e.exit.hdr);
      if (auto c = read_captures(rec + sizeof(abi::SyscallExitEvent), size - sizeof(abi::SyscallExitEvent),
                                 e.exit.n_captures, &e.captures);
          !c)
        return c.error();
      return e;
    }
    case abi::RecordType::kBreakpoint: {
      auto r = read_body<abi::BreakpointEvent>(rec, size, "breakpoint");
      if (!r) return r.error();
      e.bp = *r;
      if (e.bp.kind != static_cast<std::uint8_t>(abi::BreakpointKind::kKernel) &&
          e.bp.kind != static_cast<std::uint8_t>(abi::BreakpointKind::kUser) &&
          e.bp.kind != static_cast<std::uint8_t>(abi::BreakpointKind::kKernelTraced))
        return make_error("breakpoint: bad kind {}", e.bp.kind);
      common(e.bp.hdr);
      return e;
    }
    default: return make_error("unknown record type {}", h.type);
  }
}

Result<std::unique_ptr<EventReader>> EventReader::open(const std::filesystem::path& path,
                                                       std::chrono::milliseconds wait) {
  const auto deadline = std::chrono::steady_clock::now() + wait;
  int fd = -1;
  for (;;) {
    fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd >= 0) {
      struct stat st {};
      if (fstat(fd, &st) == 0 && st.st_size >= static_cast<off_t>(sizeof(abi::ShmHeader))) {
        abi::ShmHeader h{};
        if (pread(fd, &h, sizeof h, 0) == static_cast<ssize_t>(sizeof h) && h.ready == 1) break;
      }
      ::close(fd);
      fd = -1;
    }
    if (std::chrono::steady_clock::now() >= deadline)
      return make_error("rings file {} not there or not ready: {}", path.string(), errno ? std::strerror(errno) : "not ready");
    std::this_thread::sleep_for(std::chrono::milliseconds{20});
  }
  struct stat st {};
  fstat(fd, &st);
  if (st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
    ::close(fd);
    return make_error("rings file {} must be owned by us and private (mode {:o}, uid {})", path.string(),
                      st.st_mode & 0777, st.st_uid);
  }
  const std::size_t size = static_cast<std::size_t>(st.st_size);
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) return make_error("mapping {}: {}", path.string(), std::strerror(errno));
  std::unique_ptr<EventReader> r(new EventReader());
  r->base_ = static_cast<std::uint8_t*>(p);
  r->size_ = size;
  const auto& h = *reinterpret_cast<const abi::ShmHeader*>(p);
  if (h.magic != abi::kShmMagic || h.abi_version != abi::kAbiVersion || h.n_rings == 0 || h.n_rings > abi::kMaxVcpus ||
      h.file_size != size)
    return make_error("{} is not an hvtrace rings file of ABI {} (magic {:#x}, version {}, {} rings)", path.string(),
                      abi::kAbiVersion, h.magic, h.abi_version, h.n_rings);
  // Ring i's header follows ring i-1's data; data sizes are equal for all rings.
  auto* first = reinterpret_cast<abi::RingHeader*>(r->base_ + abi::kPageSize);
  const std::uint32_t ds = first->data_size;
  if (ds < 4096 || (ds & (ds - 1)) != 0 || abi::shm_file_size(h.n_rings, ds) != size)
    return make_error("{}: ring data size {} does not match the file size {}", path.string(), ds, size);
  for (std::uint32_t i = 0; i < h.n_rings; ++i) {
    const std::uint64_t off = abi::ring_header_offset(i, ds);
    auto* rh = reinterpret_cast<abi::RingHeader*>(r->base_ + off);
    if (rh->data_size != ds || rh->data_offset != off + abi::kPageSize || rh->vcpu != i)
      return make_error("{}: ring {} header is inconsistent", path.string(), i);
    r->consumers_.emplace_back(rh, r->base_ + off + abi::kPageSize);
  }
  return r;
}

EventReader::~EventReader() {
  if (base_) munmap(base_, size_);
}

Result<bool> EventReader::next(unsigned ring, Event* out) {
  auto& c = consumers_[ring];
  const abi::RecordHeader* rec = nullptr;
  switch (c.peek(&rec)) {
    case abi::PeekStatus::kEmpty: return false;
    case abi::PeekStatus::kCorrupt: return make_error("ring {}: corrupt record framing at tail {}", ring, c.tail());
    case abi::PeekStatus::kRecord: break;
  }
  auto e = decode_record(reinterpret_cast<const std::uint8_t*>(rec), rec->size);
  c.pop();
  if (!e) return make_error("ring {} seq after {}: {}", ring, out->seq, e.error().message);
  *out = std::move(*e);
  out->ring = ring;
  return true;
}

// The monitor's clock at the event (0 for a loss record: handed over first).
static std::uint64_t record_time(const abi::RecordHeader* r) {
  if (r->type == static_cast<std::uint16_t>(abi::RecordType::kLost) || r->size < sizeof(abi::EventHeader)) return 0;
  std::uint64_t t = 0;
  std::memcpy(&t, reinterpret_cast<const std::uint8_t*>(r) + offsetof(abi::EventHeader, time_ns), sizeof t);
  return t;
}

std::optional<unsigned> EventReader::oldest_ring() {
  std::optional<unsigned> best;
  std::uint64_t best_t = 0;
  for (unsigned k = 0; k < consumers_.size(); ++k) {
    const abi::RecordHeader* rec = nullptr;
    switch (consumers_[k].peek(&rec)) {
      case abi::PeekStatus::kEmpty: continue;
      case abi::PeekStatus::kCorrupt: return k;   // next() reports it
      case abi::PeekStatus::kRecord: break;
    }
    if (const std::uint64_t t = record_time(rec); !best || t < best_t) {
      best = k;
      best_t = t;
    }
  }
  return best;
}

Result<std::size_t> EventReader::poll(const std::function<void(const Event&)>& fn, std::size_t max) {
  // The oldest record of all rings first, so a call that blocked on one vCPU and returned on
  // another is handed over entry first (one ring: simply in order). Each pick looks at every ring
  // twice: a ring found empty the first time may have received an older record (published before
  // the one seen in a later ring) by the second look.
  std::size_t handled = 0;
  Event e;
  while (handled < max && oldest_ring()) {
    const unsigned ring = *oldest_ring();
    auto r = next(ring, &e);
    if (!r) return r.error();
    if (!*r) continue;
    ++handled;
    fn(e);
    if (auto_ack_ && e.sync()) consumers_[ring].ack(e.seq);
  }
  return handled;
}

bool EventReader::wait(std::chrono::microseconds timeout, abi::WaitMode mode, std::chrono::microseconds spin,
                       bool urgent_only) {
  if (consumers_.size() == 1)
    return consumers_[0].wait_data(mode, static_cast<std::uint64_t>(spin.count()) * 1000,
                                   static_cast<std::uint64_t>(timeout.count()) * 1000, urgent_only);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    for (auto& c : consumers_)
      if (c.wait_data(abi::WaitMode::kSpin, 0, 0)) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds{200});
  }
}

RingStats EventReader::stats(unsigned ring) const {
  const auto* h = consumers_.at(ring).header();
  auto ld = [](const std::uint64_t& v) { return std::atomic_ref<const std::uint64_t>(v).load(std::memory_order_relaxed); };
  RingStats s;
  s.published = ld(h->published);
  s.bytes = ld(h->head);
  s.lost_records = ld(h->lost_records);
  s.lost_pending = ld(h->lost_pending);
  for (std::size_t i = 0; i < std::size(s.drops); ++i) s.drops[i] = ld(h->drops[i]);
  s.sync_waits = ld(h->sync_waits);
  s.sync_timeouts = ld(h->sync_timeouts);
  s.sync_degraded = ld(h->sync_degraded);
  s.sync_wait_ns = ld(h->sync_wait_ns);
  s.cb_calls = ld(h->cb_calls);
  s.cb_ns = ld(h->cb_ns);
  s.open_evicted = ld(h->open_evicted);
  s.entries_missed = ld(h->entries_missed);
  return s;
}

std::uint64_t EventReader::bp_serial() const {
  auto& h = *reinterpret_cast<abi::ShmHeader*>(base_);
  return std::atomic_ref<std::uint64_t>(h.bp_serial).load(std::memory_order_acquire);
}

std::uint64_t EventReader::bp_in_force() const {
  auto& h = *reinterpret_cast<abi::ShmHeader*>(base_);
  return std::atomic_ref<std::uint64_t>(h.bp_in_force).load(std::memory_order_acquire);
}

std::uint64_t EventReader::syscall_entry_va() const {
  auto& h = *reinterpret_cast<abi::ShmHeader*>(base_);
  return std::atomic_ref<std::uint64_t>(h.syscall_entry_va).load(std::memory_order_acquire);
}

std::uint64_t EventReader::door_entry_va(abi::Door d) const {
  auto& h = *reinterpret_cast<abi::ShmHeader*>(base_);
  return std::atomic_ref<std::uint64_t>(h.door_entry_va[static_cast<unsigned>(d)]).load(std::memory_order_acquire);
}

std::uint64_t EventReader::detect_rejected() const {
  auto& h = *reinterpret_cast<abi::ShmHeader*>(base_);
  return std::atomic_ref<std::uint64_t>(h.detect_rejected).load(std::memory_order_acquire);
}

std::uint64_t EventReader::guest_insns() const { return header_counter(&abi::ShmHeader::guest_insns); }
std::uint64_t EventReader::cond_checks() const { return header_counter(&abi::ShmHeader::cond_checks); }
std::uint64_t EventReader::kernel_blocks() const { return header_counter(&abi::ShmHeader::kernel_blocks); }

std::uint64_t EventReader::header_counter(std::uint64_t abi::ShmHeader::* field) const {
  auto& h = *reinterpret_cast<abi::ShmHeader*>(base_);
  return std::atomic_ref<std::uint64_t>(h.*field).load(std::memory_order_acquire);
}

std::uint32_t EventReader::generation() const {
  auto& h = *reinterpret_cast<abi::ShmHeader*>(base_);
  return std::atomic_ref<std::uint32_t>(h.generation).load(std::memory_order_acquire);
}

}  // namespace hvtrace::events
