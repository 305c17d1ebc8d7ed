// Kernel discovery (cold: kallsyms + BTF from RAM; warm: cached profile matched by its banner)
// and kernel virtual memory reads. See kernel.hpp.
#include "kernel/kernel.hpp"

#include <algorithm>
#include <cstring>
#include <functional>
#include <system_error>
#include <unordered_map>

namespace hvtrace::kernel {
namespace {

constexpr std::uint64_t k2M = 1ULL << 21;
constexpr std::uint64_t kMaxBtf = 64ULL << 20;
constexpr std::uint64_t kMaxNotes = 64ULL << 10;
constexpr std::size_t kMaxBanner = 512;
constexpr std::size_t kMaxCachedProfiles = 64;
constexpr std::uint64_t kKernelHalf = 0xffff800000000000ULL;

std::optional<GVA> slid(const Profile& p, const std::string& name, GVA text_va) {
  auto it = p.symbols.find(name);
  if (it == p.symbols.end()) return std::nullopt;
  return it->second.absolute ? GVA{it->second.value} : GVA{text_va.value + it->second.value};
}

// Everything that follows from knowing where _text is, virtually and physically: the kernel page
// tables, the paging mode (checked by walking _text through them), the direct map.
Result<KernelLayout> resolve_layout(const mem::PhysMem& mem, const Profile& p, GVA text_va, GPA text_pa) {
  KernelLayout l;
  l.text_va = text_va;
  l.text_pa = text_pa;
  l.virt_slide = static_cast<std::int64_t>(text_va.value - kDefaultTextVa);
  l.phys_slide = static_cast<std::int64_t>(text_pa.value - kDefaultTextPa);
  if (text_va.value < 0xffffffff80000000ULL || (text_va.value & 0xfff) != 0 || (text_pa.value & 0xfff) != 0 ||
      text_pa.value >= mem.size())
    return make_error("implausible kernel text: virtual {:#x}, physical {:#x}", text_va.value, text_pa.value);
  auto end = slid(p, "_end", text_va);
  auto top = slid(p, "init_top_pgt", text_va);
  if (!end || !top) return make_error("profile lacks _end or init_top_pgt");
  if (end->value <= text_va.value || end->value - text_va.value > (1ULL << 30) || top->value < text_va.value ||
      top->value >= end->value)
    return make_error("implausible kernel image bounds (_end={:#x}, init_top_pgt={:#x})", end->value, top->value);
  l.end_va = *end;
  l.kernel_dtb = Dtb{text_pa.value + (top->value - text_va.value)};
  auto mode = arch::detect_paging_mode(mem, l.kernel_dtb, text_va, text_pa);
  if (!mode) return std::move(mode).with_context("kernel page tables (init_top_pgt)").error();
  l.paging = *mode;
  if (auto pob = slid(p, "page_offset_base", text_va)) {
    if (pob->value < text_va.value || pob->value >= end->value) return make_error("page_offset_base outside the image");
    auto v = mem.read_u64(GPA{text_pa.value + (pob->value - text_va.value)});
    if (!v) return std::move(v).error();
    l.page_offset_base = *v;
  } else {
    l.page_offset_base = l.paging == arch::PagingMode::k5Level ? 0xff11000000000000ULL : 0xffff888000000000ULL;
  }
  if (!arch::is_canonical(GVA{l.page_offset_base}, l.paging) || (l.page_offset_base >> 63) == 0 ||
      (l.page_offset_base & ((1ULL << 30) - 1)) != 0)
    return make_error("implausible page_offset_base {:#x}", l.page_offset_base);
  return l;
}

Result<std::vector<std::byte>> read_image_bytes(const mem::PhysMem& mem, const KernelLayout& l, GVA from, GVA to,
                                                std::uint64_t max, const char* what) {
  if (from.value < l.text_va.value || to.value < from.value || to.value > l.end_va.value || to.value - from.value > max)
    return make_error("{} bounds {:#x}..{:#x} are implausible", what, from.value, to.value);
  std::vector<std::byte> out(to.value - from.value);
  HVTRACE_TRY(mem.read(GPA{l.text_pa.value + (from.value - l.text_va.value)}, out).with_context(what));
  return out;
}

std::string read_banner(const mem::PhysMem& mem, GPA at) {
  std::array<char, kMaxBanner> buf{};
  if (!mem.read(at, std::as_writable_bytes(std::span(buf)))) return {};
  std::string s(buf.data(), strnlen(buf.data(), buf.size()));
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

// GNU build id from the kernel's ELF notes (__start_notes..__stop_notes).
std::string build_id(const mem::PhysMem& mem, const Profile& p, const KernelLayout& l) {
  auto b = slid(p, "__start_notes", l.text_va);
  auto e = slid(p, "__stop_notes", l.text_va);
  if (!b || !e) return {};
  auto notes = read_image_bytes(mem, l, *b, *e, kMaxNotes, "ELF notes");
  if (!notes) return {};
  std::size_t pos = 0;
  auto u32 = [&](std::size_t at) {
    std::uint32_t v;
    std::memcpy(&v, notes->data() + at, 4);
    return v;
  };
  while (pos + 12 <= notes->size()) {
    const std::uint64_t namesz = u32(pos), descsz = u32(pos + 4), type = u32(pos + 8);
    const std::uint64_t name_at = pos + 12, desc_at = name_at + ((namesz + 3) & ~3ULL);
    const std::uint64_t next = desc_at + ((descsz + 3) & ~3ULL);
    if (next > notes->size() || next <= pos) break;
    if (type == 3 && namesz == 4 && std::memcmp(notes->data() + name_at, "GNU", 4) == 0 && descsz <= 64) {
      std::string hex;
      for (std::uint64_t i = 0; i < descsz; ++i) hex += fmt::format("{:02x}", static_cast<unsigned>((*notes)[desc_at + i]));
      return hex;
    }
    pos = next;
  }
  return {};
}

Result<void> add_btf_fields(const mem::PhysMem& mem, Profile& p, const KernelLayout& l) {
  auto b = slid(p, "__start_BTF", l.text_va);
  auto e = slid(p, "__stop_BTF", l.text_va);
  if (!b || !e) return make_error("kernel has no BTF (__start_BTF/__stop_BTF not in its symbols)");
  auto blob = read_image_bytes(mem, l, *b, *e, kMaxBtf, "BTF");
  if (!blob) return std::move(blob).error();
  return add_fields_from_btf(p, *blob,
                             fmt::format("BTF read from guest memory at {:#x}..{:#x}, {} bytes (__start_BTF..__stop_BTF)",
                                         b->value, e->value, blob->size()));
}

// Where _text is, for a profile whose symbol offsets are known but whose physical slide is not:
// linux_banner sits at a known offset from _text, so a place where the banner (or, with no banner
// known yet, "Linux version ") appears at that offset is a candidate. The kernel is loaded
// 2 MiB-aligned (CONFIG_PHYSICAL_ALIGN), so those addresses are tried first; then every hit of
// the text in RAM that yields a page-aligned _text. Each candidate must still pass
// resolve_layout (the page tables must map _text there).
using TextVaAt = std::function<std::optional<GVA>(GPA text_pa)>;

TextVaAt fixed_text_va(GVA va) {
  return [va](GPA) { return std::optional<GVA>(va); };
}

Result<KernelLayout> find_layout_by_banner(const mem::PhysMem& mem, const Profile& p, const TextVaAt& text_va_at,
                                           std::string_view banner, bool scan_all = true) {
  auto it = p.symbols.find("linux_banner");
  if (it == p.symbols.end() || it->second.absolute) return make_error("no linux_banner symbol to find the kernel by");
  const std::uint64_t off = it->second.value;
  const std::string_view want = banner.empty() ? std::string_view("Linux version ") : banner;
  std::string buf(want.size(), '\0');
  std::string last = "no kernel banner found";
  auto try_at = [&](std::uint64_t text_pa) -> std::optional<KernelLayout> {
    auto text_va = text_va_at(GPA{text_pa});
    if (!text_va) {
      last = fmt::format("_text at physical {:#x}: no virtual address for it", text_pa);
      return std::nullopt;
    }
    auto l = resolve_layout(mem, p, *text_va, GPA{text_pa});
    if (l) return *l;
    last = fmt::format("_text at physical {:#x}: {}", text_pa, l.error().message);
    return std::nullopt;
  };
  for (std::uint64_t pa = 0; pa + off + want.size() <= mem.size(); pa += k2M) {
    if (!mem.read(GPA{pa + off}, std::as_writable_bytes(std::span(buf))) || buf != want) continue;
    if (auto l = try_at(pa)) return *l;
  }
  if (!scan_all) return make_error("kernel image not found from its banner ({})", last);
  std::optional<KernelLayout> found;
  int tries = 0;
  mem.for_each_extent([&](const mem::Extent& e) {
    const auto* begin = reinterpret_cast<const char*>(e.bytes.data());
    for (const char* q = begin; tries < 64;) {
      const auto left = e.bytes.size() - static_cast<std::size_t>(q - begin);
      const void* f = ::memmem(q, left, want.data(), want.size());
      if (f == nullptr) break;
      const std::uint64_t hit = e.base.value + static_cast<std::uint64_t>(static_cast<const char*>(f) - begin);
      q = static_cast<const char*>(f) + 1;
      if (hit < off || ((hit - off) & 0xfff) != 0 || ((hit - off) % k2M) == 0) continue;
      ++tries;
      if ((found = try_at(hit - off))) return false;
    }
    return tries < 64;
  });
  if (found) return *found;
  return make_error("kernel image not found from its banner ({})", last);
}

}  // namespace

Kernel::Kernel(const mem::PhysMem& mem, Profile profile, KernelLayout layout, std::string how)
    : mem_(&mem), profile_(std::move(profile)), layout_(layout), how_(std::move(how)),
      kernel_as_(mem, layout.kernel_dtb, layout.paging) {}

// kallsyms inside the kernel image found from the page-table chain (kernel/image.hpp): digit
// runs elsewhere in RAM, which any guest process can plant, are never examined. Only when no
// image is found that way (page tables unlike Linux's) is all RAM scanned.
Result<KallsymsTables> locate_kallsyms_in_image(const mem::PhysMem& mem, DiscoveryStats& st,
                                                const std::function<bool(const KallsymsTables&)>& accept = {}) {
  st.images = find_kernel_images(mem, &st.image_scan);
  std::vector<PhysRange> regions;
  for (const auto& c : st.images) regions.push_back(PhysRange{c.text_pa.value, c.text_pa.value + c.size});
  st.whole_ram_scanned = regions.empty();
  auto in_image = [&](const KallsymsTables& t) {
    // Cheap, before decoding anything: the relative base (_text) must lie in a found image's
    // virtual range and the tables in its physical range.
    for (const auto& c : st.images)
      if (t.relative_base >= c.text_va.value && t.relative_base - c.text_va.value < c.size &&
          c.holds_pa(t.span_begin(), t.span_end() - t.span_begin()))
        return true;
    return regions.empty();
  };
  return locate_kallsyms(
      mem, {},
      [&](const KallsymsTables& t) {
        if (!in_image(t)) {
          ++st.rejected_outside_image;
          return false;
        }
        return !accept || accept(t);
      },
      regions.empty() ? nullptr : &regions, &st.kallsyms);
}

Result<std::unique_ptr<Kernel>> Kernel::discover(const mem::PhysMem& mem, bool keep_symbols) {
  Profile p;
  std::optional<KernelLayout> layout;
  std::vector<Symbol> symbols;
  std::string why_rejected;
  DiscoveryStats stats;
  auto accept = [&](const KallsymsTables& t) {
    auto syms = decode_kallsyms(mem, t);
    if (!syms) {
      why_rejected = syms.error().message;
      return false;
    }
    Profile cand;
    // One pass over the symbols against the few wanted names (the first of a name wins, as in a
    // lookup by name); no index over all symbols.
    std::unordered_map<std::string_view, const Symbol*> wanted;
    for (const std::string& n : wanted_symbols()) wanted.emplace(n, nullptr);
    for (const Symbol& s : *syms)
      if (auto it = wanted.find(s.name); it != wanted.end() && it->second == nullptr) it->second = &s;
    const std::uint64_t text = t.relative_base;
    const std::string origin = fmt::format("kallsyms in guest memory (token table at physical {:#x}, {} symbols, {})",
                                           t.token_table.value, t.num_syms, to_string(t.layout));
    for (const std::string& n : wanted_symbols()) {
      const Symbol* s = wanted[n];
      if (s == nullptr) continue;
      const std::uint64_t a = s->addr.value;
      cand.symbols[n] = a >= kKernelHalf ? ProfileSymbol{a - text, false} : ProfileSymbol{a, true};
      cand.sources["symbol " + n] = origin;
    }
    // kallsyms does not list its own tables, so the physical slide comes from the banner.
    auto l = find_layout_by_banner(mem, cand, fixed_text_va(GVA{text}), {});
    if (!l) {
      why_rejected = l.error().message;
      return false;
    }
    // The tables must be part of the kernel image the kernel's own page tables map: a copy
    // elsewhere in RAM (or one planted by a guest process) does not qualify.
    const GPA text_pa = l->text_pa;
    const std::uint64_t image = l->end_va.value - l->text_va.value;
    if (t.span_begin() < text_pa.value || t.span_end() > text_pa.value + image) {
      why_rejected = fmt::format("kallsyms tables at {:#x} lie outside the kernel image", t.token_table.value);
      return false;
    }
    const GVA tables_va{l->text_va.value + (t.token_table.value - text_pa.value)};
    if (auto pa = arch::translate(mem, l->kernel_dtb, tables_va, l->paging); !pa || *pa != t.token_table) {
      why_rejected = fmt::format("the kernel page tables do not map kallsyms at {:#x}", t.token_table.value);
      return false;
    }
    cand.kallsyms_relative_base_off = t.relative_base_at.value - text_pa.value;
    cand.kallsyms_token_table_off = t.token_table.value - text_pa.value;
    p = std::move(cand);
    layout = *l;
    symbols = std::move(*syms);
    return true;
  };
  // Steps, each named in its error: kallsyms (symbols, virtual slide), the banner and page tables
  // (physical slide, paging mode; checked per kallsyms candidate), then BTF (structure layouts).
  auto tables = locate_kallsyms_in_image(mem, stats, accept);
  if (!tables) {
    Error e = std::move(tables).error();
    if (!why_rejected.empty()) e.message += " (last candidate: " + why_rejected + ")";
    e.message = "kernel discovery, step kallsyms: " + e.message;
    return e;
  }
  if (auto b = slid(p, "linux_banner", layout->text_va))
    p.banner = read_banner(mem, GPA{layout->text_pa.value + (b->value - layout->text_va.value)});
  p.build_id = build_id(mem, p, *layout);
  HVTRACE_TRY(add_btf_fields(mem, p, *layout)
                  .with_context(fmt::format("kernel discovery, step BTF (symbols and slides found{}{})",
                                            p.banner.empty() ? "" : "; ", p.banner.substr(0, p.banner.find(" (")))));
  auto k = std::make_unique<Kernel>(mem, std::move(p), *layout, "cold discovery from guest memory");
  k->kallsyms_ = *tables;
  k->discovery_stats_ = std::move(stats);
  if (keep_symbols) k->symbols_ = std::move(symbols);
  return k;
}

Result<std::unique_ptr<Kernel>> Kernel::attach(const mem::PhysMem& mem, const AttachOptions& opts) {
  namespace fs = std::filesystem;
  if (opts.profile_file) {
    auto p = load_profile_file(*opts.profile_file);
    if (!p) return std::move(p).error();
    // A foreign profile knows symbol offsets but not this boot's slides: the virtual one is
    // kallsyms_relative_base in memory, the physical one comes from the banner.
    DiscoveryStats st;
    auto tables = locate_kallsyms_in_image(mem, st);
    if (!tables) return std::move(tables).error();
    auto l = find_layout_by_banner(mem, *p, fixed_text_va(GVA{tables->relative_base}), {});
    if (!l) return std::move(l).with_context(fmt::format("profile {} does not match this guest", opts.profile_file->string())).error();
    if (p->fields.empty()) HVTRACE_TRY(add_btf_fields(mem, *p, *l).with_context("profile has no layouts"));
    if (auto b = slid(*p, "linux_banner", l->text_va))
      p->banner = read_banner(mem, GPA{l->text_pa.value + (b->value - l->text_va.value)});
    auto k = std::make_unique<Kernel>(mem, std::move(*p), *l, "profile file " + opts.profile_file->string());
    k->kallsyms_ = *tables;
    return k;
  }
  if (opts.use_cache) {
    std::error_code ec;
    std::size_t seen = 0;
    for (fs::directory_iterator it(opts.profile_dir, ec), end; !ec && it != end && seen < kMaxCachedProfiles; it.increment(ec)) {
      if (it->path().extension() != ".json") continue;
      ++seen;
      auto p = load_profile_file(it->path());
      if (!p || !p->kallsyms_relative_base_off || !p->kallsyms_token_table_off) continue;
      // The cached offsets give _text's virtual address once its physical one is known.
      const std::uint64_t rb = *p->kallsyms_relative_base_off;
      auto l = find_layout_by_banner(
          mem, *p,
          [&](GPA text_pa) -> std::optional<GVA> {
            auto v = mem.read_u64(GPA{text_pa.value + rb});
            return v ? std::optional<GVA>(GVA{*v}) : std::nullopt;
          },
          p->banner, /*scan_all=*/false);  // a non-matching profile must stay cheap to reject
      if (!l) continue;
      std::string how = "cached profile " + it->path().string();
      // A cache from an older hvtrace lacks fields added since: reread the layouts from BTF and
      // store them (sources without their "[cached in]" note), so only the first attach pays.
      if (p->lacks_wanted_fields() && add_btf_fields(mem, *p, *l)) {
        Profile fresh = *p;
        const std::string note = " [cached in " + it->path().string() + "]";
        for (auto& [key, src] : fresh.sources)
          if (src.ends_with(note)) src.resize(src.size() - note.size());
        if (fresh.syscalls && fresh.syscalls->source.ends_with(note))
          fresh.syscalls->source.resize(fresh.syscalls->source.size() - note.size());
        how += save_profile_file(fresh, it->path()) ? ", layouts updated from BTF" : ", layouts reread from BTF (not saved)";
      }
      auto k = std::make_unique<Kernel>(mem, std::move(*p), *l, how);
      return k;
    }
  }
  auto k = discover(mem, opts.keep_symbols);
  if (!k) return k;
  if (opts.save_cache) {
    const fs::path file = opts.profile_dir / ((*k)->profile().key() + ".json");
    if (auto saved = save_profile_file((*k)->profile(), file); saved) (*k)->how_ += ", profile saved to " + file.string();
    else (*k)->how_ += ", profile not saved: " + saved.error().message;
  }
  return k;
}

Result<std::vector<Symbol>> Kernel::all_symbols() const {
  if (symbols_) return *symbols_;
  if (kallsyms_) return decode_kallsyms(*mem_, *kallsyms_);
  if (profile_.kallsyms_relative_base_off && profile_.kallsyms_token_table_off) {
    auto t = validate_kallsyms_at(*mem_, GPA{layout_.text_pa.value + *profile_.kallsyms_relative_base_off},
                                  GPA{layout_.text_pa.value + *profile_.kallsyms_token_table_off});
    if (!t) return std::move(t).error();
    return decode_kallsyms(*mem_, *t);
  }
  DiscoveryStats st;
  auto t = locate_kallsyms_in_image(*mem_, st);
  if (!t) return std::move(t).error();
  return decode_kallsyms(*mem_, *t);
}

std::optional<GVA> Kernel::symbol(const std::string& name) const { return slid(profile_, name, layout_.text_va); }

Result<GVA> Kernel::require_symbol(const std::string& name) const {
  if (auto s = symbol(name)) return *s;
  return make_error("kernel symbol {} not found ({})", name, how_);
}

Result<Field> Kernel::require_field(const std::string& name) const {
  if (auto f = profile_.field(name)) return *f;
  return make_error("structure field {} not in the profile ({})", name, how_);
}

Result<GPA> Kernel::to_phys(GVA va) const {
  const KernelLayout& l = layout_;
  if (va.value >= l.text_va.value && va.value < l.end_va.value) return GPA{l.text_pa.value + (va.value - l.text_va.value)};
  if (va.value >= l.page_offset_base && va.value - l.page_offset_base < mem_->size())
    return GPA{va.value - l.page_offset_base};
  return kernel_as_.translate(va);
}

Result<void> Kernel::read(GVA va, std::span<std::byte> out) const {
  return mem::for_each_page_chunk(va.value, out.size(), [&](std::uint64_t cur, std::size_t done, std::size_t chunk) -> Result<void> {
    auto pa = to_phys(GVA{cur});
    if (!pa) return std::move(pa).error();
    return mem_->read(*pa, out.subspan(done, chunk));
  });
}

Result<std::string> Kernel::read_string(GVA va, std::size_t max) const {
  std::string s(max, '\0');
  // Page by page, stopping at the NUL, so a string that ends before an unmapped page still reads.
  bool ended = false;
  auto r = mem::for_each_page_chunk(va.value, max, [&](std::uint64_t cur, std::size_t done, std::size_t chunk) -> Result<void> {
    if (ended) return {};
    HVTRACE_TRY(read(GVA{cur}, std::as_writable_bytes(std::span(s.data() + done, chunk))));
    ended = std::memchr(s.data() + done, 0, chunk) != nullptr;
    return {};
  });
  if (!r) return std::move(r).error();
  s.resize(strnlen(s.data(), max));
  return s;
}

}  // namespace hvtrace::kernel
