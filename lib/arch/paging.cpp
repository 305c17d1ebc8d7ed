// The x86-64 page walk. Every entry read goes through PhysMem, so a page table outside RAM or in
// a hole is a clean failure, never a crash.
#include "arch/paging.hpp"

#include <algorithm>

namespace hvtrace::arch {

const char* name(PagingMode m) { return m == PagingMode::k5Level ? "5-level" : "4-level"; }

const char* entry_name(int level) {
  switch (level) {
    case 5: return "PML5E";
    case 4: return "PML4E";
    case 3: return "PDPTE";
    case 2: return "PDE";
    case 1: return "PTE";
    default: return "page-table base";
  }
}

bool is_canonical(GVA va, PagingMode mode) {
  const int bits = mode == PagingMode::k5Level ? 57 : 48;
  const auto s = static_cast<std::int64_t>(va.value << (64 - bits)) >> (64 - bits);
  return static_cast<std::uint64_t>(s) == va.value;
}

Error Walk::error() const {
  const char* what = "";
  switch (fault) {
    case WalkFault::kNone: return make_error("no error");
    case WalkFault::kNonCanonical:
      return make_error("virtual address {:#x} is not canonical for {} paging (cr3={:#x})", va.value, name(mode),
                        dtb.value);
    case WalkFault::kNotPresent: what = "not present"; break;
    case WalkFault::kReservedBits: what = "has reserved bits set"; break;
    case WalkFault::kReadFailed:
      return make_error("translating {:#x}: reading {} failed (cr3={:#x}): {}", va.value, entry_name(fault_level),
                        dtb.value, read_error);
  }
  const std::uint64_t entry = nsteps > 0 ? steps[static_cast<std::size_t>(nsteps - 1)].entry : 0;
  return make_error("translating {:#x}: {} {} (entry={:#x}, cr3={:#x}, {})", va.value, entry_name(fault_level), what,
                    entry, dtb.value, name(mode));
}

Walk walk(const mem::PhysMem& mem, Dtb dtb, GVA va, PagingMode mode) {
  Walk w;
  w.va = va;
  w.dtb = dtb;
  w.mode = mode;
  if (!is_canonical(va, mode)) {
    w.fault = WalkFault::kNonCanonical;
    return w;
  }
  const int top = static_cast<int>(mode);
  std::uint64_t table = dtb.value & kPteAddrMask;
  bool writable = true, user = true, nx = false;
  for (int level = top; level >= 1; --level) {
    const unsigned shift = 12U + 9U * static_cast<unsigned>(level - 1);
    const std::uint64_t index = (va.value >> shift) & 0x1ff;
    const GPA addr{table + index * 8};
    auto e = mem.read_u64(addr);
    if (!e) {
      w.fault = WalkFault::kReadFailed;
      w.fault_level = level;
      w.read_error = e.error().message;
      return w;
    }
    w.steps[static_cast<std::size_t>(w.nsteps++)] = WalkStep{level, addr, *e};
    const std::uint64_t entry = *e;
    if ((entry & kPtePresent) == 0) {
      w.fault = WalkFault::kNotPresent;
      w.fault_level = level;
      return w;
    }
    writable = writable && (entry & kPteWrite) != 0;
    user = user && (entry & kPteUser) != 0;
    nx = nx || (entry & kPteNx) != 0;
    const bool large = (entry & kPteLarge) != 0 && (level == 2 || level == 3);
    if ((entry & kPteLarge) != 0 && level > 3) {  // PS is reserved in PML4E/PML5E
      w.fault = WalkFault::kReservedBits;
      w.fault_level = level;
      return w;
    }
    if (level == 1 || large) {
      const std::uint64_t size = 1ULL << shift;
      // Large pages keep PAT in bit 12, so mask the frame to the page size.
      const std::uint64_t frame = entry & kPteAddrMask & ~(size - 1);
      w.pa = GPA{frame | (va.value & (size - 1))};
      w.page_size = size;
      w.writable = writable;
      w.user = user;
      w.nx = nx;
      return w;
    }
    table = entry & kPteAddrMask;
  }
  return w;  // unreachable: level 1 always returns
}

Result<GPA> translate(const mem::PhysMem& mem, Dtb dtb, GVA va, PagingMode mode) {
  Walk w = walk(mem, dtb, va, mode);
  if (!w.ok()) return w.error();
  return w.pa;
}

Result<GPA> AddressSpace::translate(GVA va) {
  const std::uint64_t vpn = va.value >> 12;
  Cached& slot = cache_[vpn % kCacheSlots];
  if (slot.vpn == vpn) {
    auto leaf = mem_->read_u64(slot.leaf_addr);
    if (leaf && *leaf == slot.leaf) return GPA{slot.page_base | (va.value & (slot.page_size - 1))};
    slot = Cached{};
  }
  Walk w = walk(*mem_, dtb_, va, mode_);
  if (!w.ok()) return w.error();
  const WalkStep& leaf = w.steps[static_cast<std::size_t>(w.nsteps - 1)];
  slot = Cached{vpn, leaf.entry_addr, leaf.entry, w.pa.value & ~(w.page_size - 1), w.page_size};
  return w.pa;
}

std::size_t AddressSpace::cache_size() const {
  return static_cast<std::size_t>(std::count_if(cache_.begin(), cache_.end(), [](const Cached& c) { return c.vpn != kEmpty; }));
}

Result<void> AddressSpace::read(GVA va, std::span<std::byte> out) {
  return mem::for_each_page_chunk(va.value, out.size(), [&](std::uint64_t cur, std::size_t done, std::size_t chunk) -> Result<void> {
    auto pa = translate(GVA{cur});
    if (!pa) return std::move(pa).error();
    return mem_->read(*pa, out.subspan(done, chunk));
  });
}

Result<PagingMode> detect_paging_mode(const mem::PhysMem& mem, Dtb dtb, GVA va, GPA expected_pa) {
  for (PagingMode m : {PagingMode::k5Level, PagingMode::k4Level}) {
    Walk w = walk(mem, dtb, va, m);
    if (w.ok() && w.pa == expected_pa) return m;
  }
  return make_error("neither 4- nor 5-level paging maps {:#x} to physical {:#x} under cr3={:#x}", va.value,
                    expected_pa.value, dtb.value);
}

}  // namespace hvtrace::arch
