// Kernel image from the page-table chain; see image.hpp.
#include "kernel/image.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>

namespace hvtrace::kernel {
namespace {

constexpr std::uint64_t kPresent = 1ULL << 0, kUser = 1ULL << 2, kLarge = 1ULL << 7;
constexpr std::uint64_t kAddr = 0x000f'ffff'ffff'f000ULL;
constexpr std::uint64_t k2M = 1ULL << 21;
constexpr std::uint64_t kKernelImageBase = 0xffffffff80000000ULL;   // PML4 511, PDPT 510, PD 0

// A table entry pointing to the next table: present, not a large page, in RAM. (Linux's upper
// entries may carry the user bit, e.g. head_64.S's _PAGE_TABLE_NOENC; only the leaves say
// supervisor.)
std::optional<std::uint64_t> table_entry(const mem::PhysMem& mem, std::uint64_t table, unsigned index) {
  auto e = mem.read_u64(GPA{table + 8ULL * index});
  if (!e || (*e & kPresent) == 0 || (*e & kLarge) != 0) return std::nullopt;
  const std::uint64_t next = *e & kAddr;
  if (next >= mem.size() || next + 4096 > mem.size()) return std::nullopt;
  return next;
}

// The image a page directory maps: the first present entry (a supervisor 2 MiB page) is _text;
// the run goes on over present entries (2 MiB pages must continue the physical run; split ones,
// pointing to a page table, are taken as they come) to the last present one.
std::optional<KernelImageCandidate> image_of(const mem::PhysMem& mem, std::uint64_t pd) {
  std::uint64_t e[512];
  if (!mem.read(GPA{pd}, std::as_writable_bytes(std::span(e)))) return std::nullopt;
  unsigned first = 512;
  for (unsigned i = 0; i < 512 && first == 512; ++i)
    if ((e[i] & kPresent) != 0) first = i;
  if (first == 512 || (e[first] & (kLarge | kUser)) != kLarge) return std::nullopt;
  const std::uint64_t text_pa = e[first] & kAddr & ~(k2M - 1);
  if ((e[first] & kAddr & (k2M - 1)) != 0 || text_pa >= mem.size()) return std::nullopt;
  unsigned last = first;
  for (unsigned i = first + 1; i < 512; ++i) {
    if ((e[i] & kPresent) == 0) continue;
    if ((e[i] & kUser) != 0) break;
    if ((e[i] & kLarge) != 0 && (e[i] & kAddr) != text_pa + (i - first) * k2M) break;
    last = i;
  }
  KernelImageCandidate c;
  c.text_va = GVA{kKernelImageBase + first * k2M};
  c.text_pa = GPA{text_pa};
  c.size = std::min<std::uint64_t>((last - first + 1) * k2M, mem.size() - text_pa);
  c.page_directory = GPA{pd};
  return c;
}

}  // namespace

std::vector<KernelImageCandidate> find_kernel_images(const mem::PhysMem& mem, KernelImageScanStats* stats) {
  KernelImageScanStats st;
  std::map<std::uint64_t, std::uint64_t> refs;   // page directory -> roots reaching it
  mem.for_each_extent([&](const mem::Extent& x) {
    const std::uint64_t first = (x.base.value + 4095) & ~4095ULL;
    for (std::uint64_t page = first; page + 4096 <= x.base.value + x.bytes.size(); page += 4096) {
      ++st.pages_scanned;
      std::uint64_t top = 0;
      std::memcpy(&top, x.bytes.data() + (page - x.base.value) + 8 * 511, 8);
      if ((top & kPresent) == 0 || (top & kLarge) != 0 || (top & kAddr) + 4096 > mem.size()) continue;
      const std::uint64_t next = top & kAddr;
      // 4-level: next is the PDPT (entry 510 -> PD); 5-level: next is the P4D (511 -> PDPT -> 510).
      std::optional<std::uint64_t> pds[2] = {table_entry(mem, next, 510), std::nullopt};
      if (auto pdpt = table_entry(mem, next, 511)) pds[1] = table_entry(mem, *pdpt, 510);
      bool counted = false;
      for (const auto& pd : pds) {
        if (!pd) continue;
        auto it = refs.find(*pd);
        if (it == refs.end()) {
          ++st.page_directories;
          if (refs.size() >= kMaxPageDirectories) continue;
          it = refs.emplace(*pd, 0).first;
        }
        ++it->second;
        if (!counted) ++st.roots, counted = true;
      }
    }
    return true;
  });
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranked(refs.begin(), refs.end());
  std::stable_sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  std::vector<KernelImageCandidate> out;
  for (const auto& [pd, n] : ranked) {
    if (out.size() >= kMaxKernelImageCandidates) break;
    auto c = image_of(mem, pd);
    if (!c) continue;
    c->roots = n;
    out.push_back(*c);
  }
  if (stats) *stats = st;
  return out;
}

}  // namespace hvtrace::kernel
