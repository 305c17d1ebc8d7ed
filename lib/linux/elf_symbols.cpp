#include "linux/elf_symbols.hpp"

#include <elf.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string_view>
#include <vector>

namespace hvtrace::linux_os {

std::uint32_t elf_sysv_hash(std::string_view name) {
  std::uint32_t h = 0;
  for (const unsigned char c : name) {
    h = (h << 4) + c;
    const std::uint32_t g = h & 0xf0000000U;
    if (g != 0) h ^= g >> 24;
    h &= ~g;
  }
  return h;
}

std::uint32_t elf_gnu_hash(std::string_view name) {
  std::uint32_t h = 5381;
  for (const unsigned char c : name) h = h * 33 + c;
  return h;
}

namespace {

using Status = ElfSymbolLookup::Status;

struct Fail {
  Status status;
  std::string why;
};

// One loaded object: its extent, and its tables as addresses in the process.
class Object {
 public:
  Object(const UserMemReader& read, const ElfLimits& limits) : read_(read), lim_(limits) {}

  std::optional<Fail> load(std::uint64_t base) {
    if (base >= (1ULL << 56) || (base & 0xfff) != 0) return malformed(fmt::format("base {:#x} is not a user page address", base));
    Elf64_Ehdr eh{};
    if (!read_(base, &eh, sizeof eh)) return unreadable("ELF header", base);
    if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return malformed("no ELF magic");
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB)
      return malformed("not a 64-bit little-endian object");
    if (eh.e_type != ET_DYN && eh.e_type != ET_EXEC) return malformed(fmt::format("e_type {}", eh.e_type));
    if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum > lim_.max_phdrs || eh.e_phoff > 65536)
      return malformed(fmt::format("program headers: {} x {} bytes at {:#x}", eh.e_phnum, eh.e_phentsize, eh.e_phoff));
    std::vector<Elf64_Phdr> ph(eh.e_phnum);
    if (!read_(base + eh.e_phoff, ph.data(), ph.size() * sizeof(Elf64_Phdr))) return unreadable("program headers", base + eh.e_phoff);
    std::optional<std::uint64_t> lo;
    std::uint64_t hi = 0;
    const Elf64_Phdr* dyn = nullptr;
    for (const auto& p : ph) {
      if (p.p_type == PT_LOAD) {
        if (p.p_memsz > lim_.max_span || p.p_vaddr > lim_.max_span * 4) return malformed("PT_LOAD out of bounds");
        lo = std::min(lo.value_or(p.p_vaddr), p.p_vaddr);
        hi = std::max(hi, p.p_vaddr + p.p_memsz);
      } else if (p.p_type == PT_DYNAMIC && dyn == nullptr) {
        dyn = &p;
      }
    }
    if (!lo || dyn == nullptr) return malformed("no PT_LOAD or no PT_DYNAMIC");
    const std::uint64_t first = *lo & ~std::uint64_t{0xfff};
    if (hi <= first || hi - first > lim_.max_span) return malformed("PT_LOAD span too large");
    if (eh.e_type == ET_DYN && base < first) return malformed("base below the first segment");
    bias_ = base - first;   // ET_DYN: the load bias; ET_EXEC: 0 when mapped at its link address
    span_lo_ = first;
    span_hi_ = hi;
    if (dyn->p_vaddr < span_lo_ || dyn->p_vaddr >= span_hi_) return malformed("PT_DYNAMIC outside the object");
    const std::uint64_t n = std::min<std::uint64_t>(dyn->p_memsz / sizeof(Elf64_Dyn), lim_.max_dynamic);
    std::vector<Elf64_Dyn> d(static_cast<std::size_t>(n));
    const std::uint64_t dyn_va = bias_ + dyn->p_vaddr;
    if (n == 0) return malformed("empty PT_DYNAMIC");
    if (!read_(dyn_va, d.data(), d.size() * sizeof(Elf64_Dyn))) return unreadable("dynamic section", dyn_va);
    std::optional<std::uint64_t> symtab, strtab, gnu_hash, sysv_hash;
    for (const auto& e : d) {
      if (e.d_tag == DT_NULL) break;
      switch (e.d_tag) {
        case DT_SYMTAB: symtab = e.d_un.d_ptr; break;
        case DT_STRTAB: strtab = e.d_un.d_ptr; break;
        case DT_STRSZ: strsz_ = e.d_un.d_val; break;
        case DT_SYMENT: syment_ = e.d_un.d_val; break;
        case DT_GNU_HASH: gnu_hash = e.d_un.d_ptr; break;
        case DT_HASH: sysv_hash = e.d_un.d_ptr; break;
        case DT_SONAME: soname_off_ = e.d_un.d_val; break;
        default: break;
      }
    }
    if (!symtab || !strtab || strsz_ == 0) return malformed("no DT_SYMTAB, DT_STRTAB or DT_STRSZ");
    if (syment_ != sizeof(Elf64_Sym)) return malformed(fmt::format("DT_SYMENT {}", syment_));
    if (!gnu_hash && !sysv_hash) return malformed("no DT_GNU_HASH or DT_HASH");
    if (strsz_ > span_hi_ - span_lo_) return malformed("DT_STRSZ larger than the object");
    if (!(symtab_ = addr(*symtab)) || !(strtab_ = addr(*strtab))) return malformed("DT_SYMTAB/DT_STRTAB outside the object");
    if (gnu_hash) {
      if (!(gnu_ = addr(*gnu_hash))) return malformed("DT_GNU_HASH outside the object");
    } else if (!(sysv_ = addr(*sysv_hash))) {
      return malformed("DT_HASH outside the object");
    }
    return std::nullopt;
  }

  // DT_SONAME's string ("" when none or unreadable), at most max_name bytes.
  std::string soname() {
    if (!soname_off_ || *soname_off_ >= strsz_) return {};
    std::string s;
    for (std::uint64_t i = 0; i < lim_.max_name && *soname_off_ + i < strsz_; ++i) {
      char c = 0;
      if (read(*strtab_ + *soname_off_ + i, &c, 1, "DT_SONAME")) return {};
      if (c == '\0') break;
      s += c;
    }
    return s;
  }

  // The symbol's address, nullopt when not exported; a failure when a table is unreadable.
  std::optional<Fail> lookup(const std::string& name, std::optional<std::uint64_t>* out) {
    return gnu_ ? lookup_gnu(name, out) : lookup_sysv(name, out);
  }

 private:
  // A d_ptr: relocated (inside [bias + lo, bias + hi)) or still a link-time address.
  std::optional<std::uint64_t> addr(std::uint64_t p) const {
    if (p >= bias_ + span_lo_ && p < bias_ + span_hi_) return p;
    if (p >= span_lo_ && p < span_hi_) return bias_ + p;
    return std::nullopt;
  }
  bool inside(std::uint64_t va, std::uint64_t len) const {
    return va >= bias_ + span_lo_ && len <= span_hi_ - span_lo_ && va - (bias_ + span_lo_) <= (span_hi_ - span_lo_) - len;
  }
  std::optional<Fail> read(std::uint64_t va, void* dst, std::size_t len, const char* what) {
    if (!inside(va, len)) return malformed(fmt::format("{} at {:#x} outside the object", what, va));
    if (!read_(va, dst, len)) return unreadable(what, va);
    return std::nullopt;
  }
  static Fail unreadable(const char* what, std::uint64_t va) { return {Status::kUnreadable, fmt::format("{} at {:#x} not readable", what, va)}; }
  static Fail malformed(std::string why) { return {Status::kMalformed, std::move(why)}; }

  // Symbol `idx` if it is `name`, defined and a function or object: its address.
  std::optional<Fail> match(std::uint32_t idx, const std::string& name, std::optional<std::uint64_t>* out) {
    Elf64_Sym s{};
    if (auto f = read(*symtab_ + std::uint64_t{idx} * sizeof s, &s, sizeof s, "symbol")) return f;
    if (s.st_name >= strsz_ || s.st_shndx == SHN_UNDEF || s.st_value == 0) return std::nullopt;
    const unsigned type = ELF64_ST_TYPE(s.st_info);
    if (type != STT_FUNC && type != STT_OBJECT) return std::nullopt;
    const std::uint64_t want = name.size() + 1;   // the name and its NUL
    if (want > lim_.max_name || want > strsz_ - s.st_name) return std::nullopt;
    std::string got(want, '\0');
    if (auto f = read(*strtab_ + s.st_name, got.data(), got.size(), "symbol name")) return f;
    if (got.compare(0, name.size(), name) != 0 || got.back() != '\0') return std::nullopt;
    if (s.st_value < span_lo_ || s.st_value >= span_hi_) return std::nullopt;   // a value outside the object: not usable
    *out = bias_ + s.st_value;
    return std::nullopt;
  }

  std::optional<Fail> lookup_gnu(const std::string& name, std::optional<std::uint64_t>* out) {
    std::uint32_t hdr[4] = {};   // nbuckets, symoffset, bloom_size (64-bit words), bloom_shift
    if (auto f = read(*gnu_, hdr, sizeof hdr, "DT_GNU_HASH header")) return f;
    const std::uint32_t nbuckets = hdr[0], symoffset = hdr[1], bloom_size = hdr[2];
    if (nbuckets == 0 || nbuckets > lim_.max_buckets || bloom_size > lim_.max_buckets) return malformed("DT_GNU_HASH sizes");
    const std::uint32_t h = elf_gnu_hash(name);
    const std::uint64_t buckets = *gnu_ + sizeof hdr + std::uint64_t{bloom_size} * 8;
    const std::uint64_t chains = buckets + std::uint64_t{nbuckets} * 4;
    std::uint32_t sym = 0;
    if (auto f = read(buckets + std::uint64_t{h % nbuckets} * 4, &sym, 4, "DT_GNU_HASH bucket")) return f;
    if (sym == 0 || sym < symoffset) return std::nullopt;   // empty bucket
    for (std::uint32_t step = 0; step < lim_.max_chain; ++step, ++sym) {
      std::uint32_t c = 0;
      if (auto f = read(chains + std::uint64_t{sym - symoffset} * 4, &c, 4, "DT_GNU_HASH chain")) return f;
      if ((c | 1U) == (h | 1U)) {
        if (auto f = match(sym, name, out)) return f;
        if (*out) return std::nullopt;
      }
      if ((c & 1U) != 0) return std::nullopt;   // end of the chain
    }
    return std::nullopt;   // a chain longer than the bound: treated as not found
  }

  std::optional<Fail> lookup_sysv(const std::string& name, std::optional<std::uint64_t>* out) {
    std::uint32_t hdr[2] = {};   // nbucket, nchain
    if (auto f = read(*sysv_, hdr, sizeof hdr, "DT_HASH header")) return f;
    const std::uint32_t nbucket = hdr[0], nchain = hdr[1];
    if (nbucket == 0 || nbucket > lim_.max_buckets || nchain > lim_.max_buckets) return malformed("DT_HASH sizes");
    const std::uint64_t buckets = *sysv_ + sizeof hdr, chains = buckets + std::uint64_t{nbucket} * 4;
    std::uint32_t sym = 0;
    if (auto f = read(buckets + std::uint64_t{elf_sysv_hash(name) % nbucket} * 4, &sym, 4, "DT_HASH bucket")) return f;
    for (std::uint32_t step = 0; sym != STN_UNDEF && step < lim_.max_chain; ++step) {
      if (sym >= nchain) return malformed("DT_HASH chain index past nchain");
      if (auto f = match(sym, name, out)) return f;
      if (*out) return std::nullopt;
      if (auto f = read(chains + std::uint64_t{sym} * 4, &sym, 4, "DT_HASH chain")) return f;
    }
    return std::nullopt;
  }

  const UserMemReader& read_;
  const ElfLimits& lim_;
  std::uint64_t bias_ = 0, span_lo_ = 0, span_hi_ = 0;
  std::uint64_t strsz_ = 0, syment_ = sizeof(Elf64_Sym);
  std::optional<std::uint64_t> symtab_, strtab_, gnu_, sysv_, soname_off_;
};

}  // namespace

ElfSymbolLookup find_dynamic_symbols(const UserMemReader& read, std::uint64_t base, std::span<const std::string> names,
                                     const ElfLimits& limits) {
  ElfSymbolLookup r;
  Object obj(read, limits);
  if (auto f = obj.load(base)) {
    r.status = f->status;
    r.why = std::move(f->why);
    return r;
  }
  for (const auto& name : names) {
    if (name.empty()) continue;
    std::optional<std::uint64_t> va;
    if (auto f = obj.lookup(name, &va)) {
      r.status = f->status;
      r.why = fmt::format("{}: {}", name, f->why);
      r.found.clear();
      return r;
    }
    if (va) r.found[name] = *va;
  }
  return r;
}

std::vector<LoadedObject> scan_loaded_objects(const UserMemReader& read, std::uint64_t va, std::uint64_t window,
                                              std::size_t max_found, const ElfLimits& limits) {
  std::vector<LoadedObject> out;
  constexpr std::uint64_t kUserTop = 1ULL << 56;
  if (va >= kUserTop) return out;
  const std::uint64_t page = va & ~std::uint64_t{0xfff};
  const std::uint64_t pages = std::min<std::uint64_t>(window >> 12, 1U << 20);
  const auto probe = [&](std::uint64_t p) {
    std::uint32_t magic = 0;
    if (!read(p, &magic, sizeof magic) || std::memcmp(&magic, ELFMAG, SELFMAG) != 0) return;
    Object obj(read, limits);
    if (obj.load(p)) return;   // not a loadable object we can read (yet)
    out.push_back(LoadedObject{p, obj.soname()});
  };
  for (std::uint64_t i = 0; i <= pages && out.size() < max_found; ++i) {   // nearest first, both ways
    if (page >= i * 4096) probe(page - i * 4096);
    if (i != 0 && page + i * 4096 < kUserTop && out.size() < max_found) probe(page + i * 4096);
  }
  return out;
}

}  // namespace hvtrace::linux_os
