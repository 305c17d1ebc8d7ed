// The reader side without a guest: a rings file written by the real producer code decodes into
// the events that went in (captures included), sync records are acked, loss shows up as LOST plus
// per-cause counters, and records whose sizes lie are errors, never reads past the record.
#include "events/event_reader.hpp"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <filesystem>

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
