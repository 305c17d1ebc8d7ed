// Builds x86-64 page tables inside a FakeMem, for unit tests, fuzz seeds and benchmarks: a
// synthetic guest whose page tables we know exactly. Tables are allocated from a pool of
// physical pages given at construction.
#pragma once

#include "arch/paging.hpp"
#include "mem/phys_mem.hpp"

namespace hvtrace::arch {

class PageTableBuilder {
 public:
  // Tables are taken from [pool, pool + pool_pages * 4 KiB); the root table is the first page.
  PageTableBuilder(mem::FakeMem& mem, PagingMode mode, GPA pool, std::uint64_t pool_pages);
  [[nodiscard]] Dtb dtb() const { return Dtb{pool_.value}; }
  [[nodiscard]] PagingMode mode() const { return mode_; }
  // Map one page of page_size (4 KiB, 2 MiB or 1 GiB) with extra entry flags (present is implied).
  Result<void> map(GVA va, GPA pa, std::uint64_t page_size, std::uint64_t flags = kPteWrite);
  // Map [va, va+len) to [pa, pa+len) with 4 KiB pages.
  Result<void> map_range(GVA va, GPA pa, std::uint64_t len, std::uint64_t flags = kPteWrite);
  // Physical address of the entry at `level` on va's path; creates missing tables above it.
  Result<GPA> entry_address(GVA va, int level);
  [[nodiscard]] std::uint64_t tables_used() const { return next_; }

 private:
  Result<GPA> alloc_table();
  mem::FakeMem* mem_;
  PagingMode mode_;
  GPA pool_;
  std::uint64_t pool_pages_;
  std::uint64_t next_ = 1;
};

}  // namespace hvtrace::arch
