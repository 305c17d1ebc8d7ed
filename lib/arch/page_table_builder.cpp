#include "arch/page_table_builder.hpp"

namespace hvtrace::arch {

PageTableBuilder::PageTableBuilder(mem::FakeMem& mem, PagingMode mode, GPA pool, std::uint64_t pool_pages)
    : mem_(&mem), mode_(mode), pool_(pool), pool_pages_(pool_pages) {
  (void)mem_->write_u64(pool_, 0);  // make the root page exist
}

Result<GPA> PageTableBuilder::alloc_table() {
  if (next_ >= pool_pages_) return make_error("page-table pool of {} pages exhausted", pool_pages_);
  GPA t{pool_.value + next_++ * mem::kPageSize};
  HVTRACE_TRY(mem_->write_u64(t, 0));
  return t;
}

Result<GPA> PageTableBuilder::entry_address(GVA va, int level) {
  std::uint64_t table = pool_.value;
  for (int l = static_cast<int>(mode_); l >= 1; --l) {
    const unsigned shift = 12U + 9U * static_cast<unsigned>(l - 1);
    GPA addr{table + ((va.value >> shift) & 0x1ff) * 8};
    if (l == level) return addr;
    auto e = mem_->read_u64(addr);
    if (!e) return std::move(e).error();
    if ((*e & kPtePresent) == 0) {
      auto t = alloc_table();
      if (!t) return t;
      *e = t->value | kPtePresent | kPteWrite | kPteUser;
      HVTRACE_TRY(mem_->write_u64(addr, *e));
    } else if ((*e & kPteLarge) != 0 && l <= 3) {
      return make_error("{:#x} is already mapped by a large page at level {}", va.value, l);
    }
    table = *e & kPteAddrMask;
  }
  return make_error("level {} out of range", level);
}

Result<void> PageTableBuilder::map(GVA va, GPA pa, std::uint64_t page_size, std::uint64_t flags) {
  int level = 1;
  if (page_size == (1ULL << 21)) level = 2;
  else if (page_size == (1ULL << 30)) level = 3;
  else if (page_size != mem::kPageSize) return make_error("unsupported page size {:#x}", page_size);
  if ((va.value | pa.value) & (page_size - 1)) return make_error("{:#x} -> {:#x} not aligned to {:#x}", va.value, pa.value, page_size);
  auto addr = entry_address(va, level);
  if (!addr) return std::move(addr).error();
  std::uint64_t e = pa.value | flags | kPtePresent | (level > 1 ? kPteLarge : 0);
  return mem_->write_u64(*addr, e);
}

Result<void> PageTableBuilder::map_range(GVA va, GPA pa, std::uint64_t len, std::uint64_t flags) {
  for (std::uint64_t off = 0; off < len; off += mem::kPageSize)
    HVTRACE_TRY(map(GVA{va.value + off}, GPA{pa.value + off}, mem::kPageSize, flags));
  return {};
}

}  // namespace hvtrace::arch
