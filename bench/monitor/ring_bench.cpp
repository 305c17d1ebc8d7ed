// The event channel without a guest: what one async publish costs the vCPU thread, how many
// events per second a consumer thread takes, and the synchronous round trip (publish → consumer
// sees it → ack → producer resumes) for each wait mode, as median and p99. Producer and consumer
// are threads of one process here; across processes the mechanism is the same shared mapping and
// futex words, so the figures carry over.
#include "hvtrace/abi/spsc.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

using namespace hvtrace::abi;

struct Ring {
  explicit Ring(std::uint32_t data_size) {
    const std::size_t bytes = kPageSize + data_size;
    mem = static_cast<std::uint8_t*>(std::aligned_alloc(kPageSize, bytes));
    std::memset(mem, 0, bytes);
    hdr = reinterpret_cast<RingHeader*>(mem);
    init_ring(*hdr, 0, data_size, kPageSize);
    prod = RingProducer(hdr, mem + kPageSize);
    cons = RingConsumer(hdr, mem + kPageSize);
  }
  ~Ring() { std::free(mem); }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  std::uint8_t* mem;
  RingHeader* hdr;
  RingProducer prod;
  RingConsumer cons;
};

SyscallEntryEvent sample_entry() {
  SyscallEntryEvent e{};
  e.hdr.rec = RecordHeader{static_cast<std::uint16_t>(RecordType::kSyscallEntry), 0, sizeof e};
  e.nr = 1;
  return e;
}

// Async publish of a 128-byte syscall-entry record, consumer draining on another thread.
void BM_AsyncPublish(benchmark::State& state) {
  Ring r(kDefaultRingBytes);
  std::atomic<bool> stop{false};
  std::uint64_t consumed = 0;
  std::thread consumer([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      const RecordHeader* rec = nullptr;
      if (r.cons.peek(&rec) == PeekStatus::kRecord) {
        r.cons.pop();
        ++consumed;
      } else {
        cpu_relax();
      }
    }
  });
  auto e = sample_entry();
  for (auto _ : state) {
    const auto seq = r.prod.take_seq();
    e.hdr.seq = seq;
    e.hdr.time_ns = monotonic_ns();
    benchmark::DoNotOptimize(r.prod.publish(seq, &e, sizeof e));
  }
  stop = true;
  consumer.join();
  state.SetItemsProcessed(state.iterations());
  state.counters["dropped"] = static_cast<double>(r.hdr->drops[0]);
  state.counters["consumed"] = static_cast<double>(consumed);
  state.counters["consumed_per_s"] = benchmark::Counter(static_cast<double>(consumed), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_AsyncPublish)->UseRealTime();

// Synchronous round trip; arg 0 = producer and consumer wait mode (0 spin, 1 block, 2 adaptive).
void BM_SyncRoundTrip(benchmark::State& state) {
  const auto mode = static_cast<WaitMode>(state.range(0));
  Ring r(1 << 20);
  std::atomic<bool> stop{false};
  std::thread consumer([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      if (!r.cons.wait_data(mode, 20'000, 50'000'000)) continue;
      const RecordHeader* rec = nullptr;
      while (r.cons.peek(&rec) == PeekStatus::kRecord) {
        const auto seq = reinterpret_cast<const EventHeader*>(rec)->seq;
        r.cons.pop();
        r.cons.ack(seq);
      }
    }
  });
  auto e = sample_entry();
  e.hdr.rec.flags = kFlagSync;
  std::vector<double> rtt;
  rtt.reserve(1 << 20);
  std::uint64_t timeouts = 0;
  for (auto _ : state) {
    const auto t0 = monotonic_ns();
    const auto seq = r.prod.take_seq();
    e.hdr.seq = seq;
    r.prod.publish(seq, &e, sizeof e);
    if (!r.prod.wait_ack(seq, mode, 20'000, 1'000'000'000, nullptr)) ++timeouts;
    rtt.push_back(static_cast<double>(monotonic_ns() - t0));
  }
  stop = true;
  consumer.join();
  std::sort(rtt.begin(), rtt.end());
  if (!rtt.empty()) {
    state.counters["p50_us"] = rtt[rtt.size() / 2] / 1000.0;
    state.counters["p99_us"] = rtt[rtt.size() * 99 / 100] / 1000.0;
  }
  state.counters["timeouts"] = static_cast<double>(timeouts);
  state.SetLabel(mode == WaitMode::kSpin ? "spin" : mode == WaitMode::kBlock ? "block" : "adaptive");
}
BENCHMARK(BM_SyncRoundTrip)->Arg(0)->Arg(1)->Arg(2)->UseRealTime()->MinTime(1.0);

}  // namespace

BENCHMARK_MAIN();
