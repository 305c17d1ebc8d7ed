// Where the kernel image lies, from the kernel's own page tables, before anything reads symbols:
// every page-table root (init_top_pgt and each process's PGD) maps the image through the same
// chain, top-level entry 511 -> entry 510 (0xffffffff80000000, 1 GiB) -> a page directory of
// 2 MiB entries (level2_kernel_pgt), in which the entries before _text and after the image are
// cleared at boot. The first present entry gives _text (virtual and physical: both KASLR slides),
// the run of present entries the image's extent. 5-level paging adds one level (511 -> 511 -> 510).
//
// A guest process can write page-table-looking bytes into its own pages, but it cannot make the
// kernel's roots point at them: candidates are ranked by how many roots reference their page
// directory (every process PGD references the real one), and only the first few are kept, so
// forged chains cost a bounded amount of work and cannot push the real image out of the list
// unless they outnumber the guest's own processes. Nothing here trusts a byte beyond bounds checks.
#pragma once

#include "common/types.hpp"
#include "mem/phys_mem.hpp"

#include <cstdint>
#include <vector>

namespace hvtrace::kernel {

struct KernelImageCandidate {
  GVA text_va;                 // first present 2 MiB entry of the page directory
  GPA text_pa;
  std::uint64_t size = 0;      // up to the last present entry of the run (<= 1 GiB)
  GPA page_directory;          // level2_kernel_pgt
  std::uint64_t roots = 0;     // page-table roots whose chain reaches this page directory
  [[nodiscard]] bool holds_pa(std::uint64_t pa, std::uint64_t len = 1) const {
    return pa >= text_pa.value && len <= size && pa - text_pa.value <= size - len;
  }
};

struct KernelImageScanStats {
  std::uint64_t pages_scanned = 0;      // 4 KiB pages looked at as possible roots
  std::uint64_t roots = 0;              // pages whose chain reached a page directory of 2 MiB entries
  std::uint64_t page_directories = 0;   // distinct page directories seen (at most kMaxPageDirectories kept)
};

inline constexpr std::size_t kMaxKernelImageCandidates = 4;
inline constexpr std::size_t kMaxPageDirectories = 256;

// The kernel-image candidates in RAM, most referenced first, at most kMaxKernelImageCandidates.
[[nodiscard]] std::vector<KernelImageCandidate> find_kernel_images(const mem::PhysMem& mem,
                                                                   KernelImageScanStats* stats = nullptr);

}  // namespace hvtrace::kernel
