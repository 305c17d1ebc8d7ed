// Page walks and translated reads over arbitrary page tables: no crash, no hang, whatever the
// entries say (loops, out-of-RAM frames, reserved bits). Input: 8-byte DTB, 8-byte VA, 1 mode
// byte, then the contents of a small guest RAM.
#include "arch/paging.hpp"

#include <cstring>

using namespace hvtrace;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 17) return 0;
  std::uint64_t dtb = 0, va = 0;
  std::memcpy(&dtb, data, 8);
  std::memcpy(&va, data + 8, 8);
  const auto mode = (data[16] & 1) != 0 ? arch::PagingMode::k5Level : arch::PagingMode::k4Level;
  mem::FakeMem m(1 << 20);
  const std::size_t n = std::min<std::size_t>(size - 17, 1 << 20);
  (void)m.write(GPA{0}, std::as_bytes(std::span(data + 17, n)));
  // Keep the DTB mostly inside RAM so the walk gets past the first level.
  const Dtb d{dtb % (1 << 20)};
  arch::Walk w = arch::walk(m, d, GVA{va}, mode);
  if (!w.ok()) (void)w.error();
  arch::AddressSpace as(m, d, mode);
  std::uint8_t buf[64];
  for (int i = 0; i < 4; ++i) (void)as.read(GVA{va + static_cast<std::uint64_t>(i) * 4090}, std::as_writable_bytes(std::span(buf)));
  (void)arch::detect_paging_mode(m, d, GVA{va}, GPA{dtb >> 20});
  return 0;
}
