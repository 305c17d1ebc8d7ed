// Finding a Linux kernel in guest physical memory with no configuration: the kernel image, both
// KASLR slides, the kernel page tables and paging mode, symbols (kallsyms) and structure layouts
// (BTF), gathered into a Profile that is cached by kernel build and reused on the next attach.
// A Kernel then reads kernel virtual memory: the image is linear (va - _text + text_pa), the
// direct map subtracts page_offset_base (itself randomized, read from memory), anything else
// goes through the kernel's page tables (init_top_pgt).
#pragma once

#include "arch/paging.hpp"
#include "common/result.hpp"
#include "common/types.hpp"
#include "kernel/image.hpp"
#include "kernel/kallsyms.hpp"
#include "kernel/profile.hpp"
#include "mem/phys_mem.hpp"

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hvtrace::kernel {

struct KernelLayout {
  GVA text_va;                 // relocated _text
  GPA text_pa;                 // where _text sits in guest RAM
  std::int64_t virt_slide = 0; // text_va - 0xffffffff81000000
  std::int64_t phys_slide = 0; // text_pa - 0x1000000
  GVA end_va;                  // _end (image upper bound)
  Dtb kernel_dtb;              // physical address of init_top_pgt
  arch::PagingMode paging = arch::PagingMode::k4Level;
  std::uint64_t page_offset_base = 0;  // start of the direct map
};

// What a cold discovery examined (counts, for tests of its cost against a hostile guest).
struct DiscoveryStats {
  KernelImageScanStats image_scan;
  std::vector<KernelImageCandidate> images;   // from the page-table chain, most referenced first
  bool whole_ram_scanned = false;             // no image found that way: kallsyms sought in all RAM
  KallsymsScanStats kallsyms;
  std::uint64_t rejected_outside_image = 0;   // complete tables whose relative base is not the image's
};

struct AttachOptions {
  std::filesystem::path profile_dir = default_profile_dir();
  bool use_cache = true;      // try cached profiles before scanning RAM
  bool save_cache = true;     // store the profile after a cold discovery
  std::optional<std::filesystem::path> profile_file;  // System.map / ISF / hvtrace JSON to use
  bool keep_symbols = false;  // keep the full kallsyms list (cold discovery decodes it anyway)
};

// One discovered kernel in one guest's memory. Not thread-safe: reads share a translation cache.
class Kernel {
 public:
  // Find the kernel: cached profile if one matches this RAM, else a cold discovery.
  [[nodiscard]] static Result<std::unique_ptr<Kernel>> attach(const mem::PhysMem& mem, const AttachOptions& opts = {});
  // Always scan RAM (kallsyms + BTF); never touches the cache.
  [[nodiscard]] static Result<std::unique_ptr<Kernel>> discover(const mem::PhysMem& mem, bool keep_symbols = false);

  [[nodiscard]] const Profile& profile() const { return profile_; }
  [[nodiscard]] const KernelLayout& layout() const { return layout_; }
  [[nodiscard]] const mem::PhysMem& memory() const { return *mem_; }
  // How this attach went: "cold discovery", "cached profile <path>", ...
  [[nodiscard]] const std::string& how() const { return how_; }
  // The full symbol list (cold discovery with keep_symbols, or after all_symbols()).
  [[nodiscard]] Result<std::vector<Symbol>> all_symbols() const;
  [[nodiscard]] const std::optional<KallsymsTables>& kallsyms() const { return kallsyms_; }
  // Cold discovery only: what it examined.
  [[nodiscard]] const DiscoveryStats& discovery_stats() const { return discovery_stats_; }

  // A symbol's runtime address (slide applied; per-CPU symbols are offsets, not addresses).
  [[nodiscard]] std::optional<GVA> symbol(const std::string& name) const;
  [[nodiscard]] Result<GVA> require_symbol(const std::string& name) const;
  [[nodiscard]] Result<Field> require_field(const std::string& name) const;

  [[nodiscard]] Result<GPA> to_phys(GVA va) const;
  [[nodiscard]] Result<void> read(GVA va, std::span<std::byte> out) const;
  template <typename T>
  [[nodiscard]] Result<T> read_as(GVA va) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T v{};
    HVTRACE_TRY(read(va, std::as_writable_bytes(std::span<T, 1>(&v, 1))));
    return v;
  }
  // Read a NUL-terminated string of at most max bytes (no NUL: the max bytes read).
  [[nodiscard]] Result<std::string> read_string(GVA va, std::size_t max) const;
  // Forget cached translations (the guest changed its page tables).
  void invalidate() const { kernel_as_.invalidate(); }

  // Assemble from parts (tests, fuzzing): layout and profile already known.
  Kernel(const mem::PhysMem& mem, Profile profile, KernelLayout layout, std::string how);

 private:
  const mem::PhysMem* mem_;
  Profile profile_;
  KernelLayout layout_;
  std::string how_;
  std::optional<KallsymsTables> kallsyms_;
  DiscoveryStats discovery_stats_;
  std::optional<std::vector<Symbol>> symbols_;
  mutable arch::AddressSpace kernel_as_;
};

// Where the kernel's text starts when it is not relocated.
constexpr std::uint64_t kDefaultTextVa = 0xffffffff81000000ULL;
constexpr std::uint64_t kDefaultTextPa = 0x1000000ULL;

}  // namespace hvtrace::kernel
