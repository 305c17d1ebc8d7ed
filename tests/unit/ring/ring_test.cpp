// The SPSC ring of abi/spsc.hpp: every record put in comes out intact and in order, across wraps
// and with PAD at every offset; dropped records are counted by cause and announced by exactly one
// LOST record carrying their number and seq range; a producer and a consumer thread agree under
// load (run this under the tsan preset too).
#include "hvtrace/abi/spsc.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

namespace {

using namespace hvtrace::abi;

struct TestRing {
  explicit TestRing(std::uint32_t data_size, std::uint64_t start = 0)
      : mem(static_cast<std::uint8_t*>(std::aligned_alloc(kPageSize, kPageSize + ((data_size + kPageSize - 1) / kPageSize) * kPageSize))) {
    std::memset(mem, 0xee, kPageSize + data_size);
    hdr = reinterpret_cast<RingHeader*>(mem);
    init_ring(*hdr, 0, data_size, kPageSize);
    hdr->head = hdr->tail = start;  // free-running counters may start anywhere
    data = mem + kPageSize;
    prod = RingProducer(hdr, data);
    cons = RingConsumer(hdr, data);
  }
  ~TestRing() { std::free(mem); }
  TestRing(const TestRing&) = delete;
  TestRing& operator=(const TestRing&) = delete;

  std::uint8_t* mem;
  RingHeader* hdr;
  std::uint8_t* data;
  RingProducer prod;
  RingConsumer cons;
};

// A record of `size` bytes whose payload is a pattern derived from seq.
struct Rec {
  EventHeader h;
};

bool put(TestRing& r, std::uint32_t size, std::uint64_t* seq_out = nullptr) {
  const std::uint64_t seq = r.prod.take_seq();
  if (seq_out) *seq_out = seq;
  auto* p = static_cast<std::uint8_t*>(r.prod.reserve(seq, size));
  if (!p) return false;
  auto* h = reinterpret_cast<EventHeader*>(p);
  h->rec = RecordHeader{static_cast<std::uint16_t>(RecordType::kCr3Write), 0, align_record(size)};
  h->seq = seq;
  for (std::uint32_t i = sizeof(EventHeader); i < align_record(size); ++i) p[i] = static_cast<std::uint8_t>(seq * 31 + i);
  r.prod.commit();
  return true;
}

// Takes one record; checks its pattern; returns its seq (or the LOST count with *lost set).
std::uint64_t get(TestRing& r, std::uint32_t* size_out = nullptr, bool* lost = nullptr) {
  const RecordHeader* rec = nullptr;
  EXPECT_EQ(r.cons.peek(&rec), PeekStatus::kRecord);
  if (!rec) return ~0ULL;
  if (rec->type == static_cast<std::uint16_t>(RecordType::kLost)) {
    if (lost) *lost = true;
    const auto n = reinterpret_cast<const LostRecord*>(rec)->lost;
    r.cons.pop();
    return n;
  }
  if (lost) *lost = false;
  const auto* p = reinterpret_cast<const std::uint8_t*>(rec);
  const auto* h = reinterpret_cast<const EventHeader*>(rec);
  const std::uint64_t seq = h->seq;
  for (std::uint32_t i = sizeof(EventHeader); i < rec->size; ++i) {
    if (p[i] != static_cast<std::uint8_t>(seq * 31 + i)) {
      ADD_FAILURE() << "payload corrupt at byte " << i << " of seq " << seq;
      break;
    }
  }
  if (size_out) *size_out = rec->size;
  r.cons.pop();
  return seq;
}

TEST(Ring, EmptyRingHasNothing) {
  TestRing r(4096);
  const RecordHeader* rec = nullptr;
  EXPECT_EQ(r.cons.peek(&rec), PeekStatus::kEmpty);
}

TEST(Ring, RecordsComeOutInOrderAcrossManyWraps) {
  TestRing r(4096);
  std::uint64_t expect = 0;
  for (int round = 0; round < 2000; ++round) {
    const std::uint32_t size = 32 + static_cast<std::uint32_t>((round * 40) % 1000);
    ASSERT_TRUE(put(r, size));
    std::uint32_t got_size = 0;
    EXPECT_EQ(get(r, &got_size), expect++);
    EXPECT_EQ(got_size, align_record(size));
  }
  EXPECT_GT(r.hdr->head, 100u * 4096u);  // many wraps happened
  EXPECT_EQ(r.hdr->drops[0], 0u);
}

// For every 8-byte offset in the area and a spread of record sizes, the record lands intact either
// in place or after one PAD at offset 0.
TEST(Ring, PadAtEveryOffset) {
  constexpr std::uint32_t kSize = 512;
  for (std::uint64_t off = 0; off < kSize; off += 8) {
    for (std::uint32_t size : {32u, 40u, 64u, 120u, 128u}) {
      TestRing r(kSize, (1ULL << 40) + off);
      std::uint64_t seq = 0;
      ASSERT_TRUE(put(r, size, &seq)) << "off " << off << " size " << size;
      ASSERT_TRUE(put(r, size)) << "off " << off << " size " << size;
      std::uint32_t got = 0;
      EXPECT_EQ(get(r, &got), seq);
      EXPECT_EQ(get(r, &got), seq + 1);
      EXPECT_EQ(got, size);
      const RecordHeader* rec = nullptr;
      EXPECT_EQ(r.cons.peek(&rec), PeekStatus::kEmpty);
      EXPECT_EQ(r.hdr->tail, r.hdr->head);
    }
  }
}

TEST(Ring, FullRingDropsAndAnnouncesOneLostRecord) {
  TestRing r(4096);
  int accepted = 0;
  std::uint64_t first_dropped = 0;
  for (int i = 0; i < 100; ++i) {
    std::uint64_t seq = 0;
    if (put(r, 200, &seq)) ++accepted;
    else if (first_dropped == 0) first_dropped = seq;
  }
  const int dropped = 100 - accepted;
  ASSERT_GT(dropped, 0);
  EXPECT_EQ(r.hdr->drops[static_cast<int>(DropCause::kRingFull)], static_cast<std::uint64_t>(dropped));
  EXPECT_EQ(r.hdr->lost_pending, static_cast<std::uint64_t>(dropped));
  for (int i = 0; i < accepted; ++i) EXPECT_EQ(get(r), static_cast<std::uint64_t>(i));
  std::uint64_t seq = 0;
  ASSERT_TRUE(put(r, 200, &seq));
  const RecordHeader* rec = nullptr;
  ASSERT_EQ(r.cons.peek(&rec), PeekStatus::kRecord);
  ASSERT_EQ(rec->type, static_cast<std::uint16_t>(RecordType::kLost));
  const auto* l = reinterpret_cast<const LostRecord*>(rec);
  EXPECT_EQ(l->lost, static_cast<std::uint64_t>(dropped));
  EXPECT_EQ(l->first_seq, first_dropped);
  EXPECT_EQ(l->last_seq, seq - 1);
  r.cons.pop();
  EXPECT_EQ(get(r), seq);
  EXPECT_EQ(r.hdr->lost_records, 1u);
  EXPECT_EQ(r.hdr->lost_pending, 0u);
}

TEST(Ring, LostRecordItselfMayNeedPad) {
  for (std::uint64_t off = 0; off < 512; off += 8) {
    TestRing r(512, off);
    r.prod.drop(r.prod.take_seq(), DropCause::kRingFull);
    std::uint64_t seq = 0;
    ASSERT_TRUE(put(r, 64, &seq));
    bool lost = false;
    EXPECT_EQ(get(r, nullptr, &lost), 1u);
    EXPECT_TRUE(lost);
    EXPECT_EQ(get(r), seq);
  }
}

TEST(Ring, OversizedRecordIsCountedAsTooBig) {
  TestRing r(4096);
  EXPECT_FALSE(put(r, 4096 / 4 + 8));
  EXPECT_EQ(r.hdr->drops[static_cast<int>(DropCause::kTooBig)], 1u);
  EXPECT_EQ(r.hdr->drops[static_cast<int>(DropCause::kRingFull)], 0u);
}

TEST(Ring, CorruptFramingIsReportedNotFollowed) {
  TestRing r(4096);
  ASSERT_TRUE(put(r, 64));
  reinterpret_cast<RecordHeader*>(r.data)->size = 12;  // not aligned
  const RecordHeader* rec = nullptr;
  EXPECT_EQ(r.cons.peek(&rec), PeekStatus::kCorrupt);
  reinterpret_cast<RecordHeader*>(r.data)->size = 8192;  // beyond the area
  EXPECT_EQ(r.cons.peek(&rec), PeekStatus::kCorrupt);
}

// The producer thread of a threaded test. A failing assertion on the consumer side (the test
// body) returns early: the destructor then raises the stop flag, which every producer loop and
// wait checks, and joins, so a failure fails the test instead of hanging the suite (or
// terminating it through a joinable std::thread).
class ProducerThread {
 public:
  template <typename F>
  explicit ProducerThread(F&& body) : t_([this, body = std::forward<F>(body)] { body(stop_); }) {}
  ~ProducerThread() {
    std::atomic_ref<std::uint32_t>(stop_).store(1, std::memory_order_release);
    join();
  }
  ProducerThread(const ProducerThread&) = delete;
  ProducerThread& operator=(const ProducerThread&) = delete;
  void join() {   // the producer ran to its end
    if (t_.joinable()) t_.join();
  }
  // Producer side: the consumer gave up.
  static bool stopped(const std::uint32_t& stop) {
    return std::atomic_ref<const std::uint32_t>(stop).load(std::memory_order_acquire) != 0;
  }

 private:
  std::uint32_t stop_ = 0;   // a futex-sized word: wait_ack takes it as its abort flag
  std::thread t_;
};

// How many empty waits the consumer tolerates before calling the producer stuck (each wait is
// bounded; the count, not a measured time, decides).
constexpr int kMaxIdleWaits = 10'000;

// A producer thread and a consumer thread; the consumer sometimes lags so the ring fills. Every
// seq is either received (in order, intact) or inside a LOST record: received + lost == sent.
TEST(Ring, ThreadedStressAccountsForEveryEvent) {
  TestRing r(16384);
  constexpr std::uint64_t kEvents = 300'000;
  std::atomic<bool> producer_done{false};
  ProducerThread producer([&](const std::uint32_t& stop) {
    for (std::uint64_t i = 0; i < kEvents && !ProducerThread::stopped(stop); ++i)
      put(r, 32 + static_cast<std::uint32_t>((i * 7919) % 600));
    // One last record that must get through, so pending loss is always announced.
    while (!ProducerThread::stopped(stop) && !put(r, 32)) std::this_thread::yield();
    producer_done = true;
  });
  std::uint64_t received = 0, lost = 0, next = 0;
  bool done = false;
  int idle = 0;
  while (!done) {
    const RecordHeader* rec = nullptr;
    const PeekStatus st = r.cons.peek(&rec);
    ASSERT_NE(st, PeekStatus::kCorrupt);
    if (st == PeekStatus::kEmpty) {
      ASSERT_LT(++idle, kMaxIdleWaits) << "the producer stopped producing (finished: " << producer_done << ")";
      r.cons.wait_data(WaitMode::kAdaptive, 2000, 1'000'000);
      continue;
    }
    idle = 0;
    bool is_lost = false;
    if (rec->type == static_cast<std::uint16_t>(RecordType::kLost)) {
      const auto* l = reinterpret_cast<const LostRecord*>(rec);
      ASSERT_EQ(l->first_seq, next);
      next = l->last_seq + 1;
    } else {
      ASSERT_EQ(reinterpret_cast<const EventHeader*>(rec)->seq, next);
      ++next;
    }
    const std::uint64_t v = get(r, nullptr, &is_lost);
    if (is_lost) lost += v;
    else ++received;
    if (!is_lost && v >= kEvents) done = true;  // the final record (retries consumed seqs too)
    if ((received & 1023) == 0) std::this_thread::yield();  // let the ring fill now and then
  }
  producer.join();
  EXPECT_EQ(received + lost, next);  // every seq up to the final record: received or lost
  EXPECT_EQ(lost, r.hdr->drops[static_cast<int>(DropCause::kRingFull)]);
  EXPECT_EQ(received, r.hdr->published);
}

// Synchronous records: the producer waits for each ack; the consumer acks after reading.
TEST(Ring, ThreadedSyncRoundTrips) {
  TestRing r(16384);
  constexpr std::uint64_t kEvents = 20'000;
  std::atomic<std::uint64_t> acked_ok{0};
  std::atomic<bool> put_failed{false};
  ProducerThread producer([&](const std::uint32_t& stop) {
    for (std::uint64_t i = 0; i < kEvents && !ProducerThread::stopped(stop); ++i) {
      std::uint64_t seq = 0;
      if (!put(r, 64, &seq)) {
        put_failed = true;   // reported by the consumer side; the producer just stops
        return;
      }
      const WaitMode mode = i % 3 == 0 ? WaitMode::kSpin : i % 3 == 1 ? WaitMode::kBlock : WaitMode::kAdaptive;
      // The stop flag is the abort word: a consumer that failed ends this wait at once.
      if (r.prod.wait_ack(seq, mode, 5'000, 5'000'000'000ULL, &stop)) ++acked_ok;
    }
  });
  for (std::uint64_t i = 0; i < kEvents; ++i) {
    int idle = 0;
    while (!r.cons.wait_data(i % 2 ? WaitMode::kBlock : WaitMode::kAdaptive, 5'000, 1'000'000'000)) {
      ASSERT_FALSE(put_failed) << "the producer could not put event " << i;
      ASSERT_LT(++idle, 30) << "no event " << i << " from the producer";
    }
    const std::uint64_t seq = get(r);
    ASSERT_EQ(seq, i);
    r.cons.ack(seq);
  }
  producer.join();
  EXPECT_EQ(acked_ok, kEvents);
  EXPECT_EQ(r.hdr->sync_timeouts, 0u);
  EXPECT_EQ(r.hdr->sync_waits, kEvents);
}

// A consumer asleep for urgent records only (it polls while records flow) is not woken by an
// ordinary record, and is woken at once by an urgent one (a vCPU waits for its ack).
TEST(Ring, AnUrgentOnlySleeperIsWokenByUrgentRecordsAlone) {
  TestRing r(4096);
  std::atomic<bool> woke{false};
  std::thread consumer([&] { woke = r.cons.wait_data(WaitMode::kBlock, 0, 30'000'000'000ULL, true); });
  const auto asleep = [&] { return std::atomic_ref<std::uint32_t>(r.hdr->consumer_waiting).load() == 2; };
  for (int i = 0; i < 5000 && !asleep(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(asleep()) << "the consumer never announced its urgent-only sleep";
  const std::uint32_t futex0 = std::atomic_ref<std::uint32_t>(r.hdr->head_futex).load();
  ASSERT_TRUE(put(r, 64));   // ordinary: no wake
  EXPECT_EQ(std::atomic_ref<std::uint32_t>(r.hdr->head_futex).load(), futex0);
  std::uint64_t seq = 0;
  auto* p = static_cast<std::uint8_t*>(r.prod.reserve(seq = r.prod.take_seq(), 64));
  ASSERT_NE(p, nullptr);
  auto* h = reinterpret_cast<EventHeader*>(p);
  h->rec = RecordHeader{static_cast<std::uint16_t>(RecordType::kCr3Write), kFlagSync, align_record(64)};
  h->seq = seq;
  r.prod.commit(true);   // urgent: woken (long before its 30-s timeout)
  consumer.join();
  EXPECT_TRUE(woke);
  EXPECT_EQ(std::atomic_ref<std::uint32_t>(r.hdr->head_futex).load(), futex0 + 1);
}

TEST(Ring, SyncWaitGivesUpOnTimeoutAndOnAbort) {
  TestRing r(4096);
  std::uint64_t seq = 0;
  ASSERT_TRUE(put(r, 64, &seq));
  EXPECT_FALSE(r.prod.wait_ack(seq, WaitMode::kAdaptive, 1000, 2'000'000, nullptr));
  std::uint32_t abort = 1;
  EXPECT_FALSE(r.prod.wait_ack(seq, WaitMode::kBlock, 0, 60'000'000'000ULL, &abort));
  EXPECT_EQ(r.hdr->sync_timeouts, 2u);
}

}  // namespace

namespace {

// The consumer maps the ring read-write and may be buggy: the producer must not trust what it can
// write. A tail outside [head - size, head] drops the event (counted as kBadTail) instead of letting
// the producer overwrite unread data or run past the ring; a max_record or head rewritten in the
// header changes nothing the producer does.
TEST(Ring, ProducerTrustsNothingTheConsumerCanWrite) {
  TestRing r(64 * 1024, 1000);
  ASSERT_TRUE(put(r, 64));
  const std::uint64_t head = r.hdr->head;
  r.hdr->tail = head + 4096;   // ahead of the producer
  EXPECT_FALSE(put(r, 64));
  r.hdr->tail = head - 64 * 1024 - 8;   // further back than the ring holds
  EXPECT_FALSE(put(r, 64));
  EXPECT_EQ(r.hdr->drops[static_cast<int>(DropCause::kBadTail)], 2u);
  r.hdr->tail = head;           // sane again: the producer resumes (after one LOST record)
  r.hdr->max_record = 0xffff'ffffu;
  r.hdr->head = 3;              // a scribbled head is ignored: the producer keeps its own
  EXPECT_FALSE(put(r, 32 * 1024)) << "max_record must come from the producer's own copy (16 KiB)";
  EXPECT_EQ(r.hdr->drops[static_cast<int>(DropCause::kTooBig)], 1u);
  EXPECT_TRUE(put(r, 64));
  EXPECT_EQ(r.hdr->head, head + sizeof(LostRecord) + 64);
}

}  // namespace
