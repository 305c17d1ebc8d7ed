// What hvtrace trace spends per call after the monitor delivered it: decoding the arguments and
// formatting the strace line (or the JSON object's fields). Typical calls with captures.
#include "syscalls/syscalls.hpp"

#include <benchmark/benchmark.h>

namespace {

using namespace hvtrace;

events::Capture cap(unsigned arg, abi::CaptureKind kind, std::string data, std::uint64_t true_len, std::uint16_t flags = 0) {
  events::Capture c;
  c.arg = arg;
  c.kind = kind;
  c.data = std::move(data);
  c.true_len = true_len;
  c.flags = flags;
  return c;
}

syscalls::Call openat_call() {
  syscalls::Call c;
  c.nr = 257;
  c.args[0] = static_cast<std::uint64_t>(-100);
  c.args[1] = 0x1000;
  c.args[2] = 02000000;
  c.ret = 3;
  c.entry_caps.push_back(cap(1, abi::CaptureKind::kString, "/usr/lib/x86_64-linux-gnu/libc.so.6", 35));
  return c;
}

syscalls::Call read_call() {
  syscalls::Call c;
  c.nr = 0;
  c.args[0] = 3;
  c.args[1] = 0x7ffd1000;
  c.args[2] = 832;
  c.ret = 832;
  c.exit_caps.push_back(cap(1, abi::CaptureKind::kBuffer, std::string(256, '\x7f'), 832, abi::kCaptureTruncated));
  return c;
}

void BM_FormatOpenat(benchmark::State& st) {
  const auto c = openat_call();
  for (auto _ : st) benchmark::DoNotOptimize(syscalls::to_text(syscalls::format_call(c, {})));
}
BENCHMARK(BM_FormatOpenat);

void BM_FormatRead256(benchmark::State& st) {
  const auto c = read_call();
  for (auto _ : st) benchmark::DoNotOptimize(syscalls::to_text(syscalls::format_call(c, {})));
}
BENCHMARK(BM_FormatRead256);

}  // namespace
