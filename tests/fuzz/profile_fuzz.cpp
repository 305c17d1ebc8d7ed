// Profile loading over arbitrary bytes: hvtrace JSON / ISF / System.map parsing, and BTF blobs
// through libbpf into layouts. No crash, no hang.
#include "kernel/profile.hpp"

using namespace hvtrace;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  if ((data[0] & 1) == 0) {
    auto p = kernel::parse_profile(text, "fuzz");
    if (p) (void)kernel::profile_to_json(*p);
  } else {
    kernel::Profile p;
    (void)kernel::add_fields_from_btf(p, std::as_bytes(std::span(data + 1, size - 1)), "fuzz");
  }
  return 0;
}
