// A field of a structure read into a buffer from guest memory: zero when it lies outside the
// buffer (the caller sized the buffer from the profile's offsets; a corrupt profile reads zeros).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace hvtrace::linux_os {

template <typename T>
[[nodiscard]] T field_at(const std::vector<std::byte>& buf, std::uint64_t off) {
  T v{};
  if (off <= buf.size() && sizeof(T) <= buf.size() - off) std::memcpy(&v, buf.data() + off, sizeof(T));
  return v;
}

}  // namespace hvtrace::linux_os
