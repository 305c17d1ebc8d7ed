// The ring algorithm of ring.h, shared by the monitor (producer) and the library (consumer) so both
// sides run the same, unit-tested code. Header-only, no allocation, no locks, no exceptions; the
// only system call is futex(2) on the shared mapping (non-private: the peer is another process).
//
// Atomic pairings (every access to a field the other side touches goes through atomic_ref):
//   P1 producer head.store(release)        → C1 consumer head.load(acquire): record bytes visible
//   C2 consumer tail.store(release)        → P2 producer tail.load(acquire): slot free to overwrite
//   P3 head.store(seq_cst); load consumer_waiting(seq_cst) ⟷  C3 store consumer_waiting(seq_cst);
//      load head — Dekker pair: either the producer sees the sleeper and wakes it, or the consumer
//      sees the new head and does not sleep.
//   C4 ack_seq.store(seq_cst); load producer_waiting ⟷ P4 store producer_waiting(seq_cst); load ack_seq
// consumer_waiting: 0 awake, 1 asleep (wake at any record), 2 asleep with a short timeout (wake
// only at an urgent record: one a vCPU waits on, kFlagSync). The producer reads it in P3 either way.
#pragma once

#include "hvtrace/abi/events.h"
#include "hvtrace/abi/ring.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>

namespace hvtrace::abi {

template <typename T>
inline std::atomic_ref<T> aref(T& v) { return std::atomic_ref<T>(v); }

inline std::uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<std::uint64_t>(ts.tv_nsec);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// One step of a spin-wait. Every 64th step yields the CPU: on a machine with fewer free cores than
// spinning threads (2 cores here), a pure spin would burn the peer's whole time slice.
inline void spin_step(unsigned i) {
  if ((i & 63) == 63) sched_yield();
  else cpu_relax();
}

// Returns 0 when woken (or value changed), -1 on timeout/interrupt.
inline long futex_wait(std::uint32_t* word, std::uint32_t expected, std::uint64_t timeout_ns) {
  timespec ts{static_cast<time_t>(timeout_ns / 1'000'000'000ULL), static_cast<long>(timeout_ns % 1'000'000'000ULL)};
  return syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, nullptr, 0);
}
inline void futex_wake(std::uint32_t* word) { syscall(SYS_futex, word, FUTEX_WAKE, 1, nullptr, nullptr, 0); }

// How a waiter waits: spin only, block on the futex at once, or spin briefly then block.
enum class WaitMode : std::uint32_t { kSpin = 0, kBlock = 1, kAdaptive = 2 };

// Initialise a ring header in freshly created (zeroed) shared memory.
inline void init_ring(RingHeader& h, std::uint32_t vcpu, std::uint32_t data_size, std::uint64_t data_offset) {
  std::memset(&h, 0, sizeof h);
  h.vcpu = vcpu;
  h.data_size = data_size;
  h.data_offset = data_offset;
  h.max_record = data_size / 4;   // >= max_event_bytes(snap) is checked where the snap length is set
}

class RingProducer {
 public:
  RingProducer() = default;
  // The producer keeps its own copy of everything it must trust (size, max_record, head): the
  // consumer maps the same file read-write and may be buggy. Call right after init_ring().
  RingProducer(RingHeader* h, std::uint8_t* data)
      : h_(h), data_(data), size_(h->data_size), mask_(h->data_size - 1), max_record_(h->max_record), head_(h->head) {}

  // Take the sequence number for the next event (dropped events consume one too).
  std::uint64_t take_seq() {
    std::uint64_t s = h_->next_seq;   // producer-owned
    aref(h_->next_seq).store(s + 1, std::memory_order_relaxed);
    return s;
  }

  // Count event `seq` as dropped for `cause`; a LOST record will precede the next record that fits.
  void drop(std::uint64_t seq, DropCause cause) {
    auto& d = h_->drops[static_cast<std::uint32_t>(cause)];
    aref(d).store(d + 1, std::memory_order_relaxed);
    if (h_->lost_pending == 0) aref(h_->lost_first_seq).store(seq, std::memory_order_relaxed);
    aref(h_->lost_pending).store(h_->lost_pending + 1, std::memory_order_relaxed);
    lost_last_seq_ = seq;
  }

  // Reserve space for one record of `size` bytes (rounded up to 8) for event `seq`. Returns where to
  // write it (the caller fills it, RecordHeader included) or nullptr after counting the drop.
  // A reservation must be followed by commit() before the next reserve().
  void* reserve(std::uint64_t seq, std::uint32_t size) {
    size = align_record(size);
    if (size < sizeof(RecordHeader) || size > max_record_) {
      drop(seq, DropCause::kTooBig);
      return nullptr;
    }
    const std::uint64_t head = head_;                                           // our own copy
    const std::uint64_t tail = aref(h_->tail).load(std::memory_order_acquire);  // P2
    if (tail > head || head - tail > size_) {  // untrusted: outside [head - size, head]
      drop(seq, DropCause::kBadTail);
      return nullptr;
    }
    std::uint64_t pos = head;
    std::uint64_t lost_at = 0, lost_pad = 0;
    const bool need_lost = h_->lost_pending != 0;
    if (need_lost) {
      lost_pad = pad_before(pos, sizeof(LostRecord));
      lost_at = pos + lost_pad;
      pos = lost_at + sizeof(LostRecord);
    }
    const std::uint64_t pad = pad_before(pos, size);
    const std::uint64_t at = pos + pad;
    const std::uint64_t end = at + size;
    if (end - tail > size_) {
      drop(seq, DropCause::kRingFull);
      return nullptr;
    }
    if (need_lost) {
      write_pad(head, lost_pad);
      auto* l = reinterpret_cast<LostRecord*>(data_ + (lost_at & mask_));
      l->hdr = RecordHeader{static_cast<std::uint16_t>(RecordType::kLost), 0, sizeof(LostRecord)};
      l->lost = h_->lost_pending;
      l->first_seq = h_->lost_first_seq;
      l->last_seq = lost_last_seq_;
      aref(h_->lost_pending).store(0, std::memory_order_relaxed);
      aref(h_->lost_records).store(h_->lost_records + 1, std::memory_order_relaxed);
    }
    write_pad(pos, pad);
    pending_end_ = end;
    return data_ + (at & mask_);
  }

  // Publish the reserved record (and any PAD/LOST before it) and wake a sleeping consumer (one
  // that asked for urgent records only, if this one is: the vCPU is about to wait for its ack).
  void commit(bool urgent = false) {
    aref(h_->published).store(h_->published + 1, std::memory_order_relaxed);
    // P1 (release semantics included) and P3: a seq_cst store then a seq_cst load, so the pair
    // with C3 is ordered without a standalone fence (which ThreadSanitizer cannot model).
    head_ = pending_end_;
    aref(h_->head).store(pending_end_, std::memory_order_seq_cst);
    if (const std::uint32_t cw = aref(h_->consumer_waiting).load(std::memory_order_seq_cst); cw == 1 || (cw == 2 && urgent)) {
      aref(h_->head_futex).fetch_add(1, std::memory_order_relaxed);
      futex_wake(&h_->head_futex);
    }
  }

  // Convenience: reserve + copy + commit of a complete record. False if dropped.
  bool publish(std::uint64_t seq, const void* rec, std::uint32_t size) {
    void* p = reserve(seq, size);
    if (p == nullptr) return false;
    std::memcpy(p, rec, size);
    static_cast<RecordHeader*>(p)->size = align_record(size);
    commit();
    return true;
  }

  // Wait until the consumer acks `seq` (a record sent with kFlagSync), at most timeout_ns. Returns
  // false on timeout or when *abort becomes non-zero (consumer detached); counts both outcomes.
  bool wait_ack(std::uint64_t seq, WaitMode mode, std::uint64_t spin_ns, std::uint64_t timeout_ns,
                const std::uint32_t* abort) {
    aref(h_->sync_waits).store(h_->sync_waits + 1, std::memory_order_relaxed);
    auto acked = [&] { return aref(h_->ack_seq).load(std::memory_order_acquire) >= seq + 1; };
    auto aborted = [&] { return abort != nullptr && std::atomic_ref<const std::uint32_t>(*abort).load(std::memory_order_acquire) != 0; };
    const std::uint64_t start = monotonic_ns();
    const std::uint64_t spin_until = mode == WaitMode::kSpin ? start + timeout_ns : mode == WaitMode::kBlock ? start : start + spin_ns;
    std::uint64_t now = start;
    for (unsigned i = 0;; ++i) {
      if (acked()) {
        aref(h_->sync_spin_acks).store(h_->sync_spin_acks + 1, std::memory_order_relaxed);
        return true;
      }
      if ((i & 63) == 0) {
        now = monotonic_ns();
        if (now >= spin_until || aborted()) break;
      }
      spin_step(i);
    }
    while (!aborted() && now - start < timeout_ns) {
      const std::uint32_t w = aref(h_->ack_futex).load(std::memory_order_acquire);
      aref(h_->producer_waiting).store(1, std::memory_order_seq_cst);  // P4
      if (aref(h_->ack_seq).load(std::memory_order_seq_cst) >= seq + 1) {
        aref(h_->producer_waiting).store(0, std::memory_order_relaxed);
        aref(h_->sync_block_acks).store(h_->sync_block_acks + 1, std::memory_order_relaxed);
        return true;
      }
      const std::uint64_t left = timeout_ns - (now - start);
      futex_wait(&h_->ack_futex, w, left < 10'000'000 ? left : 10'000'000);  // re-check abort every 10 ms
      aref(h_->producer_waiting).store(0, std::memory_order_relaxed);
      if (acked()) {
        aref(h_->sync_block_acks).store(h_->sync_block_acks + 1, std::memory_order_relaxed);
        return true;
      }
      now = monotonic_ns();
    }
    if (acked()) return true;
    aref(h_->sync_timeouts).store(h_->sync_timeouts + 1, std::memory_order_relaxed);
    return false;
  }

  [[nodiscard]] RingHeader* header() const { return h_; }

 private:
  // Bytes of PAD needed at `pos` so that a record of `size` does not straddle the end.
  std::uint64_t pad_before(std::uint64_t pos, std::uint64_t size) const {
    const std::uint64_t off = pos & mask_;
    return off + size > size_ ? size_ - off : 0;
  }
  void write_pad(std::uint64_t pos, std::uint64_t pad) {
    if (pad == 0) return;
    auto* r = reinterpret_cast<RecordHeader*>(data_ + (pos & mask_));
    *r = RecordHeader{static_cast<std::uint16_t>(RecordType::kPad), 0, static_cast<std::uint32_t>(pad)};
  }

  RingHeader* h_ = nullptr;
  std::uint8_t* data_ = nullptr;
  std::uint64_t size_ = 0;
  std::uint64_t mask_ = 0;
  std::uint32_t max_record_ = 0;
  std::uint64_t head_ = 0;
  std::uint64_t pending_end_ = 0;
  std::uint64_t lost_last_seq_ = 0;
};

enum class PeekStatus { kRecord, kEmpty, kCorrupt };

class RingConsumer {
 public:
  RingConsumer() = default;
  RingConsumer(RingHeader* h, std::uint8_t* data)
      : h_(h), data_(data), size_(h->data_size), mask_(h->data_size - 1),
        tail_(aref(h->tail).load(std::memory_order_relaxed)), head_(tail_) {}

  // The next record that is not PAD, validated against the ring's bounds. The pointer stays valid
  // until pop(). kCorrupt means the producer broke the framing; the ring cannot be read further.
  PeekStatus peek(const RecordHeader** out) {
    for (;;) {
      if (tail_ == head_) {
        head_ = aref(h_->head).load(std::memory_order_acquire);  // C1
        if (tail_ == head_) return PeekStatus::kEmpty;
      }
      if (head_ - tail_ > size_ || head_ < tail_) return PeekStatus::kCorrupt;
      const std::uint64_t off = tail_ & mask_;
      const auto* r = reinterpret_cast<const RecordHeader*>(data_ + off);
      const std::uint32_t sz = r->size;
      if (sz < sizeof(RecordHeader) || sz % kRecordAlign != 0 || off + sz > size_ || sz > head_ - tail_)
        return PeekStatus::kCorrupt;
      if (r->type == static_cast<std::uint16_t>(RecordType::kPad)) {
        tail_ += sz;
        continue;
      }
      *out = r;
      return PeekStatus::kRecord;
    }
  }

  // Release the record returned by peek() (and PADs before it) to the producer.
  void pop() {
    const auto* r = reinterpret_cast<const RecordHeader*>(data_ + (tail_ & mask_));
    tail_ += r->size;
    aref(h_->tail).store(tail_, std::memory_order_release);  // C2
  }

  // Acknowledge a synchronous record: the vCPU waiting for it resumes.
  void ack(std::uint64_t seq) {
    aref(h_->ack_seq).store(seq + 1, std::memory_order_seq_cst);  // C4
    if (aref(h_->producer_waiting).load(std::memory_order_seq_cst) != 0) {
      aref(h_->ack_futex).fetch_add(1, std::memory_order_relaxed);
      futex_wake(&h_->ack_futex);
    }
  }

  // Wait until the ring holds data or timeout_ns passes. True if data is there.
  // urgent_only: sleep through ordinary records (found at the timeout), wake at once for urgent ones.
  bool wait_data(WaitMode mode, std::uint64_t spin_ns, std::uint64_t timeout_ns, bool urgent_only = false) {
    auto has_data = [&] { return aref(h_->head).load(std::memory_order_acquire) != tail_; };
    const std::uint64_t start = monotonic_ns();
    const std::uint64_t spin_until = mode == WaitMode::kSpin ? start + timeout_ns : mode == WaitMode::kBlock ? start : start + spin_ns;
    std::uint64_t now = start;
    for (unsigned i = 0;; ++i) {
      if (has_data()) return true;
      if ((i & 63) == 0) {
        now = monotonic_ns();
        if (now >= spin_until) break;
      }
      spin_step(i);
    }
    if (now - start >= timeout_ns) return has_data();
    const std::uint32_t w = aref(h_->head_futex).load(std::memory_order_acquire);
    aref(h_->consumer_waiting).store(urgent_only ? 2u : 1u, std::memory_order_seq_cst);  // C3
    if (aref(h_->head).load(std::memory_order_seq_cst) == tail_)
      futex_wait(&h_->head_futex, w, timeout_ns - (now - start));
    aref(h_->consumer_waiting).store(0, std::memory_order_relaxed);
    return has_data();
  }

  [[nodiscard]] RingHeader* header() const { return h_; }
  [[nodiscard]] std::uint64_t tail() const { return tail_; }

 private:
  RingHeader* h_ = nullptr;
  const std::uint8_t* data_ = nullptr;
  std::uint64_t size_ = 0;
  std::uint64_t mask_ = 0;
  std::uint64_t tail_ = 0;
  std::uint64_t head_ = 0;
};

}  // namespace hvtrace::abi
