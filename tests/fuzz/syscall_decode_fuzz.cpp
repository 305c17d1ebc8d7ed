// Syscall decoding over hostile calls: random numbers, arguments, returns and captures that lie
// (arg index > 5, unknown kinds, true_len unrelated to the data, strings with no NUL, argv counts
// that do not match). No crash, no out-of-bounds read, bounded output. Inputs whose first byte has
// bit 7 set exercise the -e trace= / -e status= parsers with the rest as text.
#include "syscalls/syscalls.hpp"

#include <cstring>

using namespace hvtrace;

namespace {

class Bytes {
 public:
  Bytes(const std::uint8_t* d, std::size_t n) : d_(d), n_(n) {}
  template <typename T>
  T take() {
    T v{};
    const std::size_t k = std::min(sizeof(T), n_);
    std::memcpy(&v, d_, k);
    d_ += k;
    n_ -= k;
    return v;
  }
  std::string take_bytes(std::size_t want) {
    const std::size_t k = std::min(want, n_);
    std::string s(reinterpret_cast<const char*>(d_), k);
    d_ += k;
    n_ -= k;
    return s;
  }
  [[nodiscard]] bool empty() const { return n_ == 0; }

 private:
  const std::uint8_t* d_;
  std::size_t n_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  if ((data[0] & 0x80) != 0) {
    const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
    (void)syscalls::parse_trace_set(text);
    (void)syscalls::parse_status_set(text);
    return 0;
  }
  Bytes in(data + 1, size - 1);
  syscalls::Call c;
  c.abi = static_cast<abi::SyscallAbi>(data[0] % 3);
  const auto nr_sel = in.take<std::uint16_t>();
  // Mostly numbers in the tables (so named decoders run), sometimes any 64-bit value.
  c.nr = (nr_sel & 0x8000) != 0 ? in.take<std::uint64_t>() : (nr_sel % 600U) | (c.abi == abi::SyscallAbi::kX32 ? 0x40000000U : 0U);
  for (auto& a : c.args) a = in.take<std::uint64_t>();
  const auto ret_sel = in.take<std::uint8_t>();
  if ((ret_sel & 1) != 0) c.ret = (ret_sel & 2) != 0 ? -static_cast<std::int64_t>(in.take<std::uint16_t>() % 4200) : in.take<std::int64_t>();
  syscalls::FormatOptions opts;
  opts.string_limit = in.take<std::uint16_t>() % 300;
  const unsigned ncaps = in.take<std::uint8_t>() % 9;
  for (unsigned i = 0; i < ncaps && !in.empty(); ++i) {
    events::Capture cap;
    const auto hdr = in.take<std::uint32_t>();
    cap.arg = hdr & 0xff;
    cap.kind = static_cast<abi::CaptureKind>((hdr >> 8) & 0x7);
    cap.flags = static_cast<std::uint16_t>(hdr >> 16);
    cap.true_len = in.take<std::uint64_t>();
    if ((hdr & 0x80) == 0) cap.arg %= 6;
    cap.data = in.take_bytes(in.take<std::uint16_t>() % 1024);
    ((hdr >> 11) & 1 ? c.exit_caps : c.entry_caps).push_back(std::move(cap));
  }
  const auto f = syscalls::format_call(c, opts);
  const std::string line = syscalls::to_text(f, opts.string_limit);
  const std::string args = syscalls::format_args(c, opts);
  (void)syscalls::format_return(c);
  // Output stays proportional to the input: every byte at most 4 characters, plus fixed text.
  if (line.size() > 4 * size + 4096 || args.size() > 4 * size + 4096) __builtin_trap();
  return 0;
}
