// The monitor's bounded copies out of guest memory (its pre-processing): a NUL-terminated string,
// a buffer of known length, an argv array. Every copy is bounded by the snap length (argv: 4x snap,
// at most 64 KiB and 64 entries), every scan by max(snap, 4096) bytes, and reads never cross a
// page, so a fault late in the data still yields the readable prefix; the true length and the
// TRUNCATED / FAULT / LEN_UNKNOWN flags say what was cut. Templates over the memory reader
// (bool(va, dst, len)) so unit tests drive them with a fake guest memory.
#pragma once

#include "hvtrace/abi/events.h"

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace hvtrace::monitor {

// A string at va: copies at most snap bytes, scans up to max(snap, 4096) for the NUL.
template <typename Reader>
std::uint32_t copy_string(const Reader& read_mem, std::uint64_t va, std::uint8_t* out, std::uint32_t snap, abi::Capture* c) {
  const std::uint64_t limit = snap > 4096 ? snap : 4096;
  std::uint64_t scanned = 0;
  std::uint32_t copied = 0;
  std::uint8_t chunk[256];
  while (scanned < limit) {
    std::uint64_t n = 256 - ((va + scanned) & 255);  // never cross a page within one read
    if (n > limit - scanned) n = limit - scanned;
    if (!read_mem(va + scanned, chunk, n)) {
      c->flags |= abi::kCaptureFault | abi::kCaptureLenUnknown;
      c->true_len = scanned;
      return copied;
    }
    const void* nul = std::memchr(chunk, 0, n);
    const std::uint64_t used = nul ? static_cast<std::uint64_t>(static_cast<const std::uint8_t*>(nul) - chunk) : n;
    if (copied < snap) {
      const std::uint64_t take = used < snap - copied ? used : snap - copied;
      std::memcpy(out + copied, chunk, take);
      copied += static_cast<std::uint32_t>(take);
    }
    scanned += used;
    if (nul) {
      c->true_len = scanned;
      return copied;
    }
  }
  c->flags |= abi::kCaptureLenUnknown;
  c->true_len = scanned;
  return copied;
}

template <typename Reader>
std::uint32_t copy_buffer(const Reader& read_mem, std::uint64_t va, std::uint64_t len, std::uint8_t* out, std::uint32_t snap,
                          abi::Capture* c) {
  c->true_len = len;
  std::uint64_t want = len < snap ? len : snap;
  // Page by page so that a fault late in the buffer still yields the readable prefix.
  std::uint64_t done = 0;
  while (done < want) {
    std::uint64_t n = 4096 - ((va + done) & 4095);
    if (n > want - done) n = want - done;
    if (!read_mem(va + done, out + done, n)) {
      c->flags |= abi::kCaptureFault;
      break;
    }
    done += n;
  }
  return static_cast<std::uint32_t>(done);
}

// writev's data: the buffers of the iovec array at va (at most kMaxIovecs entries of iovcnt), in
// order, as one buffer: at most snap bytes; true_len = the sum of the iov_len read (a fault while
// reading the array stops there, flagged). 64-bit layout (iov_base, iov_len).
inline constexpr std::uint64_t kMaxIovecs = 16;
template <typename Reader>
std::uint32_t copy_iovec(const Reader& read_mem, std::uint64_t va, std::uint64_t iovcnt, std::uint8_t* out, std::uint32_t snap,
                         abi::Capture* c) {
  std::uint32_t copied = 0;
  std::uint64_t total = 0;
  const std::uint64_t n = iovcnt < kMaxIovecs ? iovcnt : kMaxIovecs;
  if (iovcnt > kMaxIovecs) c->flags |= abi::kCaptureTruncated | abi::kCaptureLenUnknown;
  for (std::uint64_t i = 0; i < n; ++i) {
    std::uint64_t iov[2] = {};
    if (!read_mem(va + i * sizeof iov, iov, sizeof iov)) {
      c->flags |= abi::kCaptureFault;
      break;
    }
    if (iov[1] > (1ULL << 31)) iov[1] = 1ULL << 31;   // a hostile length: bounded, the copy stops at snap anyway
    total += iov[1];
    if (copied < snap && iov[1] != 0) {
      abi::Capture part{};
      const std::uint32_t room = snap - copied;
      const std::uint32_t got = copy_buffer(read_mem, iov[0], iov[1], out + copied, room, &part);
      copied += got;
      c->flags |= part.flags & abi::kCaptureFault;
      if ((part.flags & abi::kCaptureFault) != 0) break;   // what follows would not be contiguous
    }
  }
  c->true_len = total;
  return copied;
}

// ptr_size: 8 for 64-bit processes, 4 for i386 ones (an array of 32-bit pointers).
template <typename Reader>
std::uint32_t copy_argv(const Reader& read_mem, std::uint64_t va, std::uint8_t* out, std::uint32_t snap, abi::Capture* c,
                        std::uint32_t ptr_size = 8, bool count_only = false) {
  // Strings are copied for the first kMaxArgv entries within the budget; entries are counted up
  // to kMaxArgvCounted (strace's argc, envp's "N vars"), one pointer read each.
  const std::uint32_t budget = count_only ? 0 : abi::argv_budget(snap);
  std::uint32_t copied = 0;
  std::uint64_t argc = 0;
  for (; argc < abi::kMaxArgvCounted; ++argc) {
    std::uint64_t p = 0;
    if (!read_mem(va + argc * ptr_size, &p, ptr_size)) {
      c->flags |= abi::kCaptureFault;
      break;
    }
    if (p == 0) break;
    if (count_only) continue;
    if (copied >= budget || argc >= abi::kMaxArgv) {
      c->flags |= abi::kCaptureTruncated;
      continue;  // keep counting argc
    }
    abi::Capture tmp{};
    const std::uint32_t room = budget - copied - 1;
    const std::uint32_t n = copy_string(read_mem, p, out + copied, snap < room ? snap : room, &tmp);
    if (tmp.flags != 0 || tmp.true_len > n) c->flags |= abi::kCaptureTruncated;
    copied += n;
    out[copied++] = 0;
  }
  if (argc == abi::kMaxArgvCounted) c->flags |= abi::kCaptureLenUnknown | (count_only ? 0 : abi::kCaptureTruncated);
  c->true_len = argc;
  return copied;
}

}  // namespace hvtrace::monitor
