// x86-64 page-table walk over guest physical memory: 4-level and 5-level (CR4.LA57) paging,
// 4 KiB / 2 MiB / 1 GiB pages. A walk returns the entry of every level it visited and, when it
// fails, which level failed and why, so errors read like "PML4E not present (cr3=0x...)".
// A walk reads at most five entries, so a loop in the page tables (an entry pointing back at its
// own table) cannot make it run away. Paging mode cannot be read from the RAM file (CR4 is not in
// memory): callers pass it, or detect it with detect_paging_mode().
#pragma once

#include "common/result.hpp"
#include "common/types.hpp"
#include "mem/phys_mem.hpp"

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hvtrace::arch {

enum class PagingMode { k4Level = 4, k5Level = 5 };
[[nodiscard]] const char* name(PagingMode m);

// Page-table entry bits.
constexpr std::uint64_t kPtePresent = 1ULL << 0;
constexpr std::uint64_t kPteWrite = 1ULL << 1;
constexpr std::uint64_t kPteUser = 1ULL << 2;
constexpr std::uint64_t kPteLarge = 1ULL << 7;  // PS: 1 GiB in a PDPTE, 2 MiB in a PDE
constexpr std::uint64_t kPteNx = 1ULL << 63;
constexpr std::uint64_t kPteAddrMask = 0x000f'ffff'ffff'f000ULL;  // 52-bit physical addresses

// Level numbers follow the kernel's: 5 = PML5E, 4 = PML4E, 3 = PDPTE, 2 = PDE, 1 = PTE.
[[nodiscard]] const char* entry_name(int level);

struct WalkStep {
  int level = 0;
  GPA entry_addr;        // where the entry was read
  std::uint64_t entry = 0;
};

enum class WalkFault { kNone, kNonCanonical, kNotPresent, kReservedBits, kReadFailed };

struct Walk {
  GVA va;
  Dtb dtb;
  PagingMode mode = PagingMode::k4Level;
  std::array<WalkStep, 5> steps{};
  int nsteps = 0;
  // Success: pa is the translation, page_size 4 KiB / 2 MiB / 1 GiB, permissions combined over levels.
  GPA pa;
  std::uint64_t page_size = 0;
  bool writable = false, user = false, nx = false;
  // Failure: the level whose entry failed (0 if before any read) and why.
  WalkFault fault = WalkFault::kNone;
  int fault_level = 0;
  std::string read_error;

  [[nodiscard]] bool ok() const { return fault == WalkFault::kNone; }
  [[nodiscard]] Error error() const;  // "PML4E not present (cr3=0x..., va=0x...)"
};

[[nodiscard]] Walk walk(const mem::PhysMem& mem, Dtb dtb, GVA va, PagingMode mode);
[[nodiscard]] Result<GPA> translate(const mem::PhysMem& mem, Dtb dtb, GVA va, PagingMode mode);
[[nodiscard]] bool is_canonical(GVA va, PagingMode mode);

// One address space (a DTB) with a translation cache. The guest may change its page tables at
// any time, so a cached translation is only used after re-reading its leaf entry and finding it
// unchanged (one 8-byte read instead of up to five); invalidate() drops everything, e.g. after a
// CR3 write or when the owner starts a new snapshot of guest state.
class AddressSpace {
 public:
  AddressSpace(const mem::PhysMem& mem, Dtb dtb, PagingMode mode) : mem_(&mem), dtb_(dtb), mode_(mode) {}
  [[nodiscard]] Result<GPA> translate(GVA va);
  // Read across page boundaries; each page is translated separately.
  [[nodiscard]] Result<void> read(GVA va, std::span<std::byte> out);
  template <typename T>
  [[nodiscard]] Result<T> read_as(GVA va) {
    static_assert(std::is_trivially_copyable_v<T>);
    T v{};
    HVTRACE_TRY(read(va, std::as_writable_bytes(std::span<T, 1>(&v, 1))));
    return v;
  }
  void invalidate() { cache_.assign(kCacheSlots, Cached{}); }
  [[nodiscard]] Dtb dtb() const { return dtb_; }
  [[nodiscard]] PagingMode mode() const { return mode_; }
  [[nodiscard]] const mem::PhysMem& memory() const { return *mem_; }
  [[nodiscard]] std::size_t cache_size() const;

 private:
  struct Cached {
    std::uint64_t vpn = kEmpty;  // va >> 12 of the cached page
    GPA leaf_addr;
    std::uint64_t leaf = 0;
    std::uint64_t page_base = 0;
    std::uint64_t page_size = 0;
  };
  static constexpr std::uint64_t kEmpty = ~0ULL;  // no canonical va has this page number
  static constexpr std::size_t kCacheSlots = 4096;  // direct-mapped by page number
  const mem::PhysMem* mem_;
  Dtb dtb_;
  PagingMode mode_;
  std::vector<Cached> cache_ = std::vector<Cached>(kCacheSlots);
};

// The paging mode under which `dtb` maps `va` to `expected_pa`, tried 5-level first (a 4-level
// walk of a 5-level table fails or maps elsewhere). Error if neither mode gives expected_pa.
[[nodiscard]] Result<PagingMode> detect_paging_mode(const mem::PhysMem& mem, Dtb dtb, GVA va, GPA expected_pa);

}  // namespace hvtrace::arch
