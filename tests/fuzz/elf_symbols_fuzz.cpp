// find_dynamic_symbols over an arbitrary loaded object: no crash, no hang, no address outside the
// object, whatever its headers, dynamic section, hash tables and names say. Input: 1 byte of
// "holes" (pages 0-7 unreadable by bit), then the object's bytes, mapped at a fixed base.
#include "linux/elf_symbols.hpp"

#include <cstring>
#include <string>
#include <vector>

using namespace hvtrace;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  constexpr std::uint64_t kBase = 0x7f00'0000'0000ULL;
  const std::uint8_t holes = data[0];
  const std::vector<std::uint8_t> mem(data + 1, data + std::min<std::size_t>(size, 1 + (1 << 20)));
  const linux_os::UserMemReader read = [&](std::uint64_t va, void* dst, std::size_t len) {
    if (va < kBase || va - kBase > mem.size() || len > mem.size() - (va - kBase)) return false;
    for (std::uint64_t p = (va - kBase) >> 12; p <= (va - kBase + len - (len ? 1 : 0)) >> 12; ++p)
      if (p < 8 && (holes >> p & 1) != 0) return false;
    std::memcpy(dst, mem.data() + (va - kBase), len);
    return true;
  };
  const std::vector<std::string> names = {"crypt", "getpwnam", "a", std::string(600, 'x')};
  const auto r = linux_os::find_dynamic_symbols(read, kBase, names);
  for (const auto& [n, va] : r.found)
    if (va < kBase || va - kBase > (1ULL << 32)) __builtin_trap();
  return 0;
}
