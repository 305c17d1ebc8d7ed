// The reader side without a guest: a rings file written by the real producer code decodes into
// the events that went in (captures included), sync records are acked, loss shows up as LOST plus
// per-cause counters, and records whose sizes lie are errors, never reads past the record.
#include "events/event_reader.hpp"

#include "hvtrace/abi/control.h"
#include "captures.hpp"   // the monitor's own capture code (monitor/, header-only)

#include <gtest/gtest.h>
#include <cstddef>
#include <random>
#include <algorithm>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

namespace hvtrace::events {
namespace {

namespace fs = std::filesystem;

// A rings file as the monitor lays it out, with producers on it.
struct FakeMonitor {
  FakeMonitor(unsigned n, std::uint32_t ds) {
    path = fs::temp_directory_path() / ("hvtrace-events-test-" + std::to_string(getpid()) + ".rings");
    fs::remove(path);
    size = abi::shm_file_size(n, ds);
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
    base = static_cast<std::uint8_t*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    ::close(fd);
    auto* h = reinterpret_cast<abi::ShmHeader*>(base);
    h->magic = abi::kShmMagic;
    h->abi_version = abi::kAbiVersion;
    h->n_rings = n;
    h->file_size = size;
    for (unsigned i = 0; i < n; ++i) {
      const auto off = abi::ring_header_offset(i, ds);
      auto* rh = reinterpret_cast<abi::RingHeader*>(base + off);
      abi::init_ring(*rh, i, ds, off + abi::kPageSize);
      prods.emplace_back(rh, base + off + abi::kPageSize);
    }
    h->ready = 1;
  }
  ~FakeMonitor() {
    munmap(base, size);
    fs::remove(path);
  }
  FakeMonitor(const FakeMonitor&) = delete;
  FakeMonitor& operator=(const FakeMonitor&) = delete;

  fs::path path;
  std::size_t size = 0;
  std::uint8_t* base = nullptr;
  std::vector<abi::RingProducer> prods;
};

// A write(1, "hello", 5) entry with its capture, as the monitor would build it.
std::vector<std::uint8_t> write_entry(std::uint64_t seq, std::uint16_t flags = 0) {
  abi::SyscallEntryEvent e{};
  e.nr = 1;
  e.args[0] = 1;
  e.args[2] = 5;
  e.cr3 = 0x1234000 | 0x5;  // PCID bits set
  e.n_captures = 1;
  abi::Capture c{1, static_cast<std::uint8_t>(abi::CaptureKind::kBuffer), 0, 5, 5};
  const std::uint32_t size = abi::align_record(sizeof e + sizeof c + 8);
  e.hdr = abi::EventHeader{{static_cast<std::uint16_t>(abi::RecordType::kSyscallEntry), flags, size}, seq, 1, 0, 0, 3};
  std::vector<std::uint8_t> b(size, 0);
  std::memcpy(b.data(), &e, sizeof e);
  std::memcpy(b.data() + sizeof e, &c, sizeof c);
  std::memcpy(b.data() + sizeof e + sizeof c, "hello", 5);
  return b;
}

TEST(EventReader, DecodesWhatTheProducerWrote) {
  FakeMonitor m(2, 64 * 1024);
  for (unsigned ring = 0; ring < 2; ++ring) {
    const auto seq = m.prods[ring].take_seq();
    auto b = write_entry(seq);
    ASSERT_TRUE(m.prods[ring].publish(seq, b.data(), static_cast<std::uint32_t>(b.size())));
  }
  auto r = EventReader::open(m.path);
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ((*r)->rings(), 2u);
  std::vector<Event> got;
  auto n = (*r)->poll([&](const Event& e) { got.push_back(e); });
  ASSERT_TRUE(n.ok()) << n.error().message;
  ASSERT_EQ(*n, 2u);
  for (const auto& e : got) {
    EXPECT_EQ(e.type, abi::RecordType::kSyscallEntry);
    EXPECT_EQ(e.entry.nr, 1u);
    EXPECT_EQ(e.dtb(), Dtb{0x1234000});
    EXPECT_EQ(e.generation, 3u);
    ASSERT_EQ(e.captures.size(), 1u);
    EXPECT_EQ(e.captures[0].data, "hello");
    EXPECT_FALSE(e.captures[0].truncated());
  }
  EXPECT_NE(got[0].ring, got[1].ring);
}

TEST(EventReader, AcksSyncRecordsAndReportsLoss) {
  FakeMonitor m(1, 64 * 1024);
  auto& p = m.prods[0];
  p.drop(p.take_seq(), abi::DropCause::kRingFull);
  p.drop(p.take_seq(), abi::DropCause::kTooBig);
  const auto seq = p.take_seq();
  auto b = write_entry(seq, abi::kFlagSync);
  ASSERT_TRUE(p.publish(seq, b.data(), static_cast<std::uint32_t>(b.size())));
  auto r = EventReader::open(m.path);
  ASSERT_TRUE(r.ok());
  std::vector<Event> got;
  ASSERT_TRUE((*r)->poll([&](const Event& e) { got.push_back(e); }).ok());
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].type, abi::RecordType::kLost);
  EXPECT_EQ(got[0].lost.lost, 2u);
  EXPECT_TRUE(got[1].sync());
  // The reader acked it, so the producer's wait ends at once.
  EXPECT_TRUE(p.wait_ack(seq, abi::WaitMode::kSpin, 0, 1'000'000'000, nullptr));
  const auto st = (*r)->stats(0);
  EXPECT_EQ(st.dropped(), 2u);
  EXPECT_EQ(st.drops[static_cast<int>(abi::DropCause::kTooBig)], 1u);
}

// Guest memory for the monitor's capture code: 4 KiB pages, mapped (zero-filled) where something
// was put, unmapped elsewhere.
struct GuestMem {
  std::map<std::uint64_t, std::vector<std::uint8_t>> pages;
  std::uint8_t& at(std::uint64_t va) {
    auto& pg = pages[va / 4096];
    if (pg.empty()) pg.assign(4096, 0);
    return pg[va % 4096];
  }
  void put(std::uint64_t va, const std::string& s) {
    for (std::size_t i = 0; i <= s.size(); ++i) at(va + i) = i < s.size() ? static_cast<std::uint8_t>(s[i]) : 0;
  }
  void put_u64(std::uint64_t va, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) at(va + i) = static_cast<std::uint8_t>(v >> (8 * i));
  }
  bool operator()(std::uint64_t va, void* dst, std::size_t len) const {
    auto* d = static_cast<std::uint8_t*>(dst);
    for (std::size_t i = 0; i < len; ++i) {
      auto it = pages.find((va + i) / 4096);
      if (it == pages.end()) return false;
      d[i] = it->second[(va + i) % 4096];
    }
    return true;
  }
};

// Capture blocks as the monitor's build_captures lays them out (monitor/plugin.cpp): the Capture
// header, the bytes the monitor's copy functions took from guest memory, zeros up to 8 bytes.
struct CaptureBuilder {
  std::vector<std::uint8_t> bytes;
  std::uint32_t n = 0;
  template <typename Copy>
  void add(abi::CaptureKind kind, std::uint8_t arg, std::uint32_t room, Copy copy) {
    abi::Capture c{arg, static_cast<std::uint8_t>(kind), 0, 0, 0};
    std::vector<std::uint8_t> data(room + 8, 0);
    const std::uint32_t len = copy(data.data(), &c);
    c.data_len = len;
    if (kind != abi::CaptureKind::kArgv && c.true_len > len) c.flags |= abi::kCaptureTruncated;
    const auto* h = reinterpret_cast<const std::uint8_t*>(&c);
    bytes.insert(bytes.end(), h, h + sizeof c);
    bytes.insert(bytes.end(), data.begin(), data.begin() + abi::align_record(len));
    ++n;
  }
};

// Publishes one event the way the monitor's emit() does: take a seq, reserve the aligned size,
// fill the record header and event header, copy body and captures, zero the tail, commit.
template <typename Body>
std::uint64_t emit(abi::RingProducer& p, abi::RecordType type, Body body, const std::vector<std::uint8_t>& extra = {},
                   std::uint16_t flags = 0) {
  const std::uint64_t seq = p.take_seq();
  const auto size = abi::align_record(sizeof body + extra.size());
  auto* at = static_cast<std::uint8_t*>(p.reserve(seq, size));
  if (at == nullptr) return seq;   // dropped: counted by the producer, a LOST record follows
  body.hdr = abi::EventHeader{{static_cast<std::uint16_t>(type), flags, size}, seq, 1000 + seq, 7 * seq, 0, 9};
  std::memcpy(at, &body, sizeof body);
  if (!extra.empty()) std::memcpy(at + sizeof body, extra.data(), extra.size());
  std::memset(at + sizeof body + extra.size(), 0, size - sizeof body - extra.size());
  p.commit();
  return seq;
}

std::vector<Event> drain(EventReader& r) {
  std::vector<Event> got;
  auto n = r.poll([&](const Event& e) { got.push_back(e); });
  EXPECT_TRUE(n.ok()) << n.error().message;
  return got;
}

// Several vCPUs: records come out in the order the monitor saw them (its clock), whatever ring
// holds them, so a call that blocked on one vCPU and returned on another has its entry first.
TEST(EventReader, SeveralRingsAreMergedInTheOrderTheMonitorSawTheEvents) {
  FakeMonitor m(3, 64 * 1024);
  std::mt19937 rng(5);
  std::uint64_t t[3] = {0, 0, 0};
  std::vector<std::uint64_t> want;
  for (int i = 0; i < 300; ++i) {
    const auto ring = static_cast<unsigned>(rng() % 3);
    t[ring] += 1 + rng() % 50;   // each ring's own events in time order, as one vCPU emits them
    const std::uint64_t time = t[ring] * 3 + ring;   // no two alike
    const auto seq = m.prods[ring].take_seq();
    auto b = write_entry(seq);
    std::memcpy(b.data() + offsetof(abi::EventHeader, time_ns), &time, sizeof time);
    ASSERT_TRUE(m.prods[ring].publish(seq, b.data(), static_cast<std::uint32_t>(b.size())));
    want.push_back(time);
  }
  std::sort(want.begin(), want.end());
  auto r = EventReader::open(m.path);
  ASSERT_TRUE(r.ok()) << r.error().message;
  std::vector<std::uint64_t> got;
  for (const auto& e : drain(**r)) got.push_back(e.time_ns);
  EXPECT_EQ(got, want);
}

// Every record type, written by the producer code with captures made by the monitor's own copy
// functions from a fake guest memory, read back through the rings file: CR3 write, syscall entry
// (string, buffer cut at the snap length, argv), syscall exit (buffer at exit, unreadable memory),
// kernel and user breakpoints, LOST with its seq range, sync flags.
TEST(EventReader, EveryRecordTypeFromTheProducerWithCaptures) {
  FakeMonitor m(1, 64 * 1024);
  auto& p = m.prods[0];
  GuestMem g;
  g.put(0x1000, "/etc/passwd");
  g.put(0x2000, "0123456789abcdefghij");   // a 20-byte buffer, cut at snap 16
  g.put(0x3000, "/bin/echo");
  g.put(0x3100, "echo");
  g.put(0x3200, "hi there");
  g.put_u64(0x3400, 0x3100);
  g.put_u64(0x3408, 0x3200);
  g.put_u64(0x3410, 0);
  constexpr std::uint32_t kSnap = 16;

  abi::Cr3WriteEvent cr3{};
  cr3.old_cr3 = 0x5000 | 1;
  cr3.new_cr3 = 0x7a000 | 2 | (1ULL << 63);
  cr3.rip = 0xffffffff81001234;
  cr3.cr3_writes = 42;
  cr3.who = {0xffff888000100000, 11, 10};
  const auto s_cr3 = emit(p, abi::RecordType::kCr3Write, cr3);

  // openat(AT_FDCWD, "/etc/passwd", ...): a string capture.
  abi::SyscallEntryEvent open{};
  open.nr = 257;
  open.args[1] = 0x1000;
  open.cr3 = 0x7000;
  CaptureBuilder oc;
  oc.add(abi::CaptureKind::kString, 1, kSnap, [&](std::uint8_t* out, abi::Capture* c) {
    return monitor::copy_string(g, 0x1000, out, kSnap, c);
  });
  open.n_captures = oc.n;
  const auto s_open = emit(p, abi::RecordType::kSyscallEntry, open, oc.bytes, abi::kFlagSync);

  // write(1, buf, 20) through int $0x80 (i386): the buffer is cut at the snap length.
  abi::SyscallEntryEvent wr{};
  wr.nr = 4;
  wr.args[1] = 0x2000;
  wr.args[2] = 20;
  wr.abi = static_cast<std::uint8_t>(abi::SyscallAbi::kI386);
  wr.door = static_cast<std::uint8_t>(abi::Door::kInt80);
  CaptureBuilder wc;
  wc.add(abi::CaptureKind::kBuffer, 1, kSnap, [&](std::uint8_t* out, abi::Capture* c) {
    return monitor::copy_buffer(g, 0x2000, 20, out, kSnap, c);
  });
  wr.n_captures = wc.n;
  const auto s_wr = emit(p, abi::RecordType::kSyscallEntry, wr, wc.bytes);

  // execve("/bin/echo", ["echo", "hi there"]): filename and argv.
  abi::SyscallEntryEvent ex{};
  ex.nr = 59;
  ex.args[0] = 0x3000;
  ex.args[1] = 0x3400;
  CaptureBuilder ec;
  ec.add(abi::CaptureKind::kString, 0, kSnap, [&](std::uint8_t* out, abi::Capture* c) {
    return monitor::copy_string(g, 0x3000, out, kSnap, c);
  });
  ec.add(abi::CaptureKind::kArgv, 1, abi::argv_budget(kSnap), [&](std::uint8_t* out, abi::Capture* c) {
    return monitor::copy_argv(g, 0x3400, out, kSnap, c);
  });
  ex.n_captures = ec.n;
  const auto s_ex = emit(p, abi::RecordType::kSyscallEntry, ex, ec.bytes);

  // Two events dropped here: the next record is preceded by one LOST record.
  const auto lost_first = p.take_seq();
  p.drop(lost_first, abi::DropCause::kRingFull);
  const auto lost_last = p.take_seq();
  p.drop(lost_last, abi::DropCause::kNoConsumer);

  // read(3, 0x9000, 100) = 100 at exit, the buffer unmapped: a capture with the fault flag.
  abi::SyscallExitEvent rd{};
  rd.ret = 100;
  rd.nr = 0;
  rd.entry_seq = s_ex;
  rd.via = static_cast<std::uint16_t>(abi::ExitVia::kSysret);
  CaptureBuilder rc;
  rc.add(abi::CaptureKind::kBuffer, 1, kSnap, [&](std::uint8_t* out, abi::Capture* c) {
    return monitor::copy_buffer(g, 0x9000, 100, out, kSnap, c);
  });
  rd.n_captures = rc.n;
  const auto s_rd = emit(p, abi::RecordType::kSyscallExit, rd, rc.bytes, abi::kFlagSyncTimedOut);

  abi::BreakpointEvent kbp{};
  kbp.va = 0xffffffff81234560;
  kbp.cr3 = 0x7000;
  kbp.regs[0] = 0xdead;
  kbp.ret_addr = 0xffffffff81000010;
  kbp.flags = abi::kBpRetAddrRead;
  kbp.id = 101;
  kbp.kind = static_cast<std::uint8_t>(abi::BreakpointKind::kKernel);
  const auto s_kbp = emit(p, abi::RecordType::kBreakpoint, kbp);
  abi::BreakpointEvent ubp = kbp;
  ubp.va = 0x401000;
  ubp.id = 201;
  ubp.flags = 0;
  ubp.kind = static_cast<std::uint8_t>(abi::BreakpointKind::kUser);
  const auto s_ubp = emit(p, abi::RecordType::kBreakpoint, ubp);

  auto r = EventReader::open(m.path);
  ASSERT_TRUE(r.ok()) << r.error().message;
  const auto got = drain(**r);
  ASSERT_EQ(got.size(), 8u);
  for (const auto& e : got) {
    EXPECT_EQ(e.ring, 0u);
    if (e.type == abi::RecordType::kLost) continue;
    EXPECT_EQ(e.generation, 9u);
    EXPECT_EQ(e.time_ns, 1000 + e.seq);
    EXPECT_EQ(e.insns, 7 * e.seq);
  }

  EXPECT_EQ(got[0].type, abi::RecordType::kCr3Write);
  EXPECT_EQ(got[0].seq, s_cr3);
  EXPECT_EQ(got[0].dtb(), Dtb{0x7a000});
  EXPECT_EQ(got[0].cr3.cr3_writes, 42u);
  EXPECT_EQ(got[0].cr3.who.pid, 11u);

  EXPECT_EQ(got[1].type, abi::RecordType::kSyscallEntry);
  EXPECT_EQ(got[1].seq, s_open);
  EXPECT_TRUE(got[1].sync());
  EXPECT_EQ(got[1].entry.nr, 257u);
  EXPECT_EQ(got[1].door(), abi::Door::kSyscall64);
  ASSERT_EQ(got[1].captures.size(), 1u);
  EXPECT_EQ(got[1].captures[0].kind, abi::CaptureKind::kString);
  EXPECT_EQ(got[1].captures[0].arg, 1u);
  EXPECT_EQ(got[1].captures[0].data, "/etc/passwd");
  EXPECT_EQ(got[1].captures[0].true_len, 11u);
  EXPECT_FALSE(got[1].captures[0].truncated());
  // The reader acked the sync record after handing it over.
  EXPECT_TRUE(p.wait_ack(s_open, abi::WaitMode::kSpin, 0, 1'000'000'000, nullptr));

  EXPECT_EQ(got[2].seq, s_wr);
  EXPECT_EQ(got[2].syscall_abi(), abi::SyscallAbi::kI386);
  EXPECT_EQ(got[2].door(), abi::Door::kInt80);
  ASSERT_EQ(got[2].captures.size(), 1u);
  EXPECT_EQ(got[2].captures[0].kind, abi::CaptureKind::kBuffer);
  EXPECT_EQ(got[2].captures[0].data, "0123456789abcdef");
  EXPECT_EQ(got[2].captures[0].true_len, 20u);
  EXPECT_TRUE(got[2].captures[0].truncated());

  EXPECT_EQ(got[3].seq, s_ex);
  ASSERT_EQ(got[3].captures.size(), 2u);
  EXPECT_EQ(got[3].captures[0].data, "/bin/echo");
  EXPECT_EQ(got[3].captures[1].kind, abi::CaptureKind::kArgv);
  EXPECT_EQ(got[3].captures[1].argv(), (std::vector<std::string>{"echo", "hi there"}));
  EXPECT_EQ(got[3].captures[1].true_len, 2u);

  EXPECT_EQ(got[4].type, abi::RecordType::kLost);
  EXPECT_EQ(got[4].lost.lost, 2u);
  EXPECT_EQ(got[4].lost.first_seq, lost_first);
  EXPECT_EQ(got[4].lost.last_seq, lost_last);
  EXPECT_EQ(got[4].seq, lost_first);

  EXPECT_EQ(got[5].type, abi::RecordType::kSyscallExit);
  EXPECT_EQ(got[5].seq, s_rd);
  EXPECT_EQ(got[5].flags, abi::kFlagSyncTimedOut);
  EXPECT_EQ(got[5].exit.ret, 100);
  EXPECT_EQ(got[5].exit.entry_seq, s_ex);
  ASSERT_EQ(got[5].captures.size(), 1u);
  EXPECT_EQ(got[5].captures[0].data, "");
  EXPECT_NE(got[5].captures[0].flags & abi::kCaptureFault, 0);
  EXPECT_TRUE(got[5].captures[0].truncated());

  EXPECT_EQ(got[6].type, abi::RecordType::kBreakpoint);
  EXPECT_EQ(got[6].seq, s_kbp);
  EXPECT_EQ(got[6].bp.id, 101u);
  EXPECT_EQ(got[6].bp.regs[0], 0xdeadu);
  EXPECT_EQ(got[6].bp.kind, static_cast<std::uint8_t>(abi::BreakpointKind::kKernel));
  EXPECT_EQ(got[7].seq, s_ubp);
  EXPECT_EQ(got[7].bp.kind, static_cast<std::uint8_t>(abi::BreakpointKind::kUser));
  EXPECT_EQ(got[7].bp.va, 0x401000u);

  const auto st = (*r)->stats(0);
  EXPECT_EQ(st.published, 7u);
  EXPECT_EQ(st.lost_records, 1u);
  EXPECT_EQ(st.dropped(), 2u);
  EXPECT_EQ(st.drops[static_cast<int>(abi::DropCause::kNoConsumer)], 1u);
}

// A small ring read while it is written: records wrap the data area (PAD records at the end),
// the ring fills (drops, then one LOST record carrying their range), and everything that went in
// comes out exactly once, in order, through both read paths (EventReader and
// RingConsumer + decode_record on a second copy of the same traffic).
TEST(EventReader, WrapsPadsAndLossFromTheProducer) {
  FakeMonitor m(1, 64 * 1024);
  auto& p = m.prods[0];
  auto r = EventReader::open(m.path);
  ASSERT_TRUE(r.ok()) << r.error().message;
  std::vector<std::uint64_t> published;
  std::uint64_t lost = 0, next = 0;
  auto check = [&](const Event& e) {
    if (e.type == abi::RecordType::kLost) {
      EXPECT_EQ(e.lost.first_seq, next);
      lost += e.lost.lost;
      next = e.lost.last_seq + 1;
      return;
    }
    EXPECT_EQ(e.seq, next);
    next = e.seq + 1;
    ASSERT_EQ(e.type, abi::RecordType::kSyscallEntry);
    ASSERT_EQ(e.captures.size(), 1u);
    EXPECT_EQ(e.captures[0].data.size(), e.entry.args[2]);
    EXPECT_EQ(e.captures[0].data, std::string(e.entry.args[2], static_cast<char>('a' + e.seq % 26)));
  };
  for (int round = 0; round < 40; ++round) {
    // Enough to fill the 64 KiB ring every few rounds; sizes vary so PADs land anywhere.
    for (int k = 0; k < 60; ++k) {
      abi::SyscallEntryEvent e{};
      e.nr = 1;
      const std::uint64_t seq_next = p.header()->next_seq;
      const std::uint32_t len = static_cast<std::uint32_t>((seq_next * 97) % 1500);
      e.args[2] = len;
      std::string data(len, static_cast<char>('a' + seq_next % 26));
      GuestMem g;
      g.put(0x1000, data);
      CaptureBuilder cb;
      cb.add(abi::CaptureKind::kBuffer, 1, len, [&](std::uint8_t* out, abi::Capture* c) {
        return monitor::copy_buffer(g, 0x1000, len, out, len, c);
      });
      e.n_captures = cb.n;
      published.push_back(emit(p, abi::RecordType::kSyscallEntry, e, cb.bytes));
    }
    if (round % 3 != 2) {   // let the ring overflow now and then
      auto n = (*r)->poll(check);
      ASSERT_TRUE(n.ok()) << n.error().message;
    }
  }
  // One more that fits, so pending loss is announced, then read everything.
  auto n = (*r)->poll(check);
  ASSERT_TRUE(n.ok()) << n.error().message;
  abi::SyscallEntryEvent last{};
  last.nr = 1;
  emit(p, abi::RecordType::kSyscallEntry, last, {});
  n = (*r)->poll([&](const Event& e) {
    if (e.type == abi::RecordType::kLost) check(e);
    else next = e.seq + 1;
  });
  ASSERT_TRUE(n.ok()) << n.error().message;
  const auto st = (*r)->stats(0);
  EXPECT_GT(lost, 0u) << "the ring never overflowed: the test lost its point";
  EXPECT_EQ(lost, st.dropped());
  EXPECT_EQ(next, published.size() + 1);
  EXPECT_EQ(st.lost_pending, 0u);
}

// The same producer traffic consumed without EventReader: RingConsumer::peek + decode_record.
TEST(DecodeRecord, RecordsFromTheProducerThroughRingConsumer) {
  constexpr std::uint32_t kData = 4096 * 16;
  std::unique_ptr<std::uint8_t, decltype(&std::free)> mem(
      static_cast<std::uint8_t*>(std::aligned_alloc(abi::kPageSize, abi::kPageSize + kData)), &std::free);
  auto* h = reinterpret_cast<abi::RingHeader*>(mem.get());
  abi::init_ring(*h, 0, kData, abi::kPageSize);
  abi::RingProducer p(h, mem.get() + abi::kPageSize);
  abi::RingConsumer c(h, mem.get() + abi::kPageSize);
  std::uint64_t want = 0;
  for (int i = 0; i < 3000; ++i) {
    abi::BreakpointEvent bp{};
    bp.kind = static_cast<std::uint8_t>(i % 2 ? abi::BreakpointKind::kUser : abi::BreakpointKind::kKernel);
    bp.id = static_cast<std::uint32_t>(i);
    emit(p, abi::RecordType::kBreakpoint, bp);
    if (i % 5 == 0) {
      abi::Cr3WriteEvent cr3{};
      cr3.new_cr3 = static_cast<std::uint64_t>(i) << 12;
      emit(p, abi::RecordType::kCr3Write, cr3);
    }
    const abi::RecordHeader* rec = nullptr;
    while (c.peek(&rec) == abi::PeekStatus::kRecord) {
      auto e = decode_record(reinterpret_cast<const std::uint8_t*>(rec), rec->size);
      ASSERT_TRUE(e.ok()) << e.error().message;
      EXPECT_EQ(e->seq, want++);
      if (e->type == abi::RecordType::kBreakpoint) EXPECT_EQ(e->bp.id, static_cast<std::uint32_t>(i));
      else EXPECT_EQ(e->cr3.new_cr3, static_cast<std::uint64_t>(i) << 12);
      c.pop();
    }
  }
  EXPECT_EQ(want, h->next_seq);
  EXPECT_EQ(h->lost_records, 0u);
  EXPECT_GT(h->head, kData) << "the ring never wrapped";
}

TEST(DecodeRecord, SizesThatLieAreErrors) {
  auto b = write_entry(0);
  EXPECT_TRUE(decode_record(b.data(), b.size()).ok());
  EXPECT_FALSE(decode_record(b.data(), 100).ok());  // shorter than the fixed part
  auto c = b;
  reinterpret_cast<abi::Capture*>(c.data() + sizeof(abi::SyscallEntryEvent))->data_len = 4096;
  EXPECT_FALSE(decode_record(c.data(), c.size()).ok());
  c = b;
  reinterpret_cast<abi::SyscallEntryEvent*>(c.data())->n_captures = 3;
  EXPECT_FALSE(decode_record(c.data(), c.size()).ok());
  c = b;
  reinterpret_cast<abi::SyscallEntryEvent*>(c.data())->n_captures = 1000000;
  EXPECT_FALSE(decode_record(c.data(), c.size()).ok());
  c = b;
  reinterpret_cast<abi::Capture*>(c.data() + sizeof(abi::SyscallEntryEvent))->kind = 9;
  EXPECT_FALSE(decode_record(c.data(), c.size()).ok());
  c = b;
  reinterpret_cast<abi::RecordHeader*>(c.data())->type = 77;
  EXPECT_FALSE(decode_record(c.data(), c.size()).ok());
}

TEST(EventReader, RefusesFilesThatAreNotRings) {
  const fs::path p = fs::temp_directory_path() / ("hvtrace-events-junk-" + std::to_string(getpid()));
  {
    const int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    std::vector<char> junk(8192, 1);
    ASSERT_EQ(write(fd, junk.data(), junk.size()), 8192);
    ::close(fd);
  }
  EXPECT_FALSE(EventReader::open(p).ok());
  fs::remove(p);
  EXPECT_FALSE(EventReader::open(p).ok());
}

}  // namespace
}  // namespace hvtrace::events
