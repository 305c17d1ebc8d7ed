// kallsyms extraction from guest physical memory; see kallsyms.hpp for the layout and invariants.
#include "kernel/kallsyms.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <memory>

namespace hvtrace::kernel {
namespace {

constexpr char kDigitTokens[] = "0\0" "1\0" "2\0" "3\0" "4\0" "5\0" "6\0" "7\0" "8\0" "9";  // + final NUL
constexpr std::size_t kDigitTokensLen = sizeof(kDigitTokens);  // 20 bytes, NUL of "9" included
constexpr std::uint64_t kMaxTokenLen = 256;
constexpr std::uint64_t kMaxTokenTable = 256 * kMaxTokenLen;
constexpr std::uint64_t kKernelTextMin = 0xffffffff80000000ULL;

constexpr std::uint64_t align8(std::uint64_t v) { return (v + 7) & ~7ULL; }

// A copy of a physical range with bounds-checked little-endian accessors.
struct Window {
  std::uint64_t base = 0, size = 0;
  std::unique_ptr<std::byte[]> bytes;  // not zeroed first: windows are megabytes, read at once
  [[nodiscard]] bool has(std::uint64_t pa, std::uint64_t n) const {
    return pa >= base && mem::in_range(pa - base, n, size);
  }
  template <typename T>
  [[nodiscard]] std::optional<T> get(std::uint64_t pa) const {
    if (!has(pa, sizeof(T))) return std::nullopt;
    T v;
    std::memcpy(&v, bytes.get() + (pa - base), sizeof(T));
    return v;
  }
  [[nodiscard]] const std::byte* at(std::uint64_t pa) const { return bytes.get() + (pa - base); }
};

Result<Window> read_window(const mem::PhysMem& mem, std::uint64_t from, std::uint64_t to) {
  from = std::min(from, mem.size());
  to = std::min(to, mem.size());
  Window w;
  w.base = from;
  if (to <= from) return w;
  w.size = to - from;
  w.bytes = std::make_unique_for_overwrite<std::byte[]>(w.size);
  HVTRACE_TRY(mem.read(GPA{from}, std::span(w.bytes.get(), w.size)));
  return w;
}

// Length of the NUL-terminated token at pa, or nullopt if it is too long or leaves the window.
std::optional<std::uint64_t> token_len(const Window& w, std::uint64_t pa) {
  for (std::uint64_t n = 0; n <= kMaxTokenLen; ++n) {
    auto c = w.get<std::uint8_t>(pa + n);
    if (!c) return std::nullopt;
    if (*c == 0) return n;
  }
  return std::nullopt;
}

struct TokenTable {
  std::uint64_t table = 0, index = 0;
};

// Given the physical address of token "0" (token 48), confirm a token table around it.
std::optional<TokenTable> validate_token_table(const Window& w, std::uint64_t zero_at) {
  std::uint64_t p = zero_at;
  for (int i = 48; i < 256; ++i) {
    auto n = token_len(w, p);
    if (!n) return std::nullopt;
    p += *n + 1;
  }
  const std::uint64_t end = p, index = align8(end);
  std::array<std::uint16_t, 256> ti{};
  for (std::size_t i = 0; i < 256; ++i) {
    auto v = w.get<std::uint16_t>(index + 2 * i);
    if (!v) return std::nullopt;
    ti[i] = *v;
  }
  if (ti[0] != 0 || ti[48] > zero_at) return std::nullopt;
  const std::uint64_t start = zero_at - ti[48];
  if (start % 8 != 0) return std::nullopt;
  for (std::size_t i = 0; i < 256; ++i) {
    auto n = token_len(w, start + ti[i]);
    const std::uint64_t next = i + 1 < 256 ? start + ti[i + 1] : end;
    if (!n || start + ti[i] + *n + 1 != next) return std::nullopt;
  }
  return TokenTable{start, index};
}

// Walk N compressed names starting at `names`; returns the end, and records where each 256th name
// starts. Lengths are ULEB128 of one or two bytes (bit 7 of the first byte set: a second follows;
// Linux 6.1+, where names may be longer than 127 bytes).
std::optional<std::uint64_t> walk_names(const Window& w, std::uint64_t names, std::uint32_t n,
                                        std::vector<std::uint32_t>* markers_out) {
  std::uint64_t p = names;
  for (std::uint32_t i = 0; i < n; ++i) {
    if (markers_out != nullptr && i % 256 == 0) markers_out->push_back(static_cast<std::uint32_t>(p - names));
    auto b0 = w.get<std::uint8_t>(p);
    if (!b0) return std::nullopt;
    std::uint64_t len = *b0;
    p += 1;
    if ((*b0 & 0x80) != 0) {
      auto b1 = w.get<std::uint8_t>(p);
      if (!b1) return std::nullopt;
      len = (*b0 & 0x7fU) | (static_cast<std::uint64_t>(*b1) << 7);
      p += 1;
    }
    if (len == 0 || !w.has(p, len)) return std::nullopt;
    p += len;
  }
  return p;
}

// N names at `names` followed (8-aligned) by markers that agree with them: returns where the
// markers end (8-aligned), i.e. where the next table starts.
std::optional<std::uint64_t> check_names_and_markers(const Window& w, std::uint64_t names, std::uint32_t n,
                                                     std::uint64_t* markers_at) {
  std::vector<std::uint32_t> expect;
  expect.reserve(n / 256 + 1);
  auto end = walk_names(w, names, n, &expect);
  if (!end) return std::nullopt;
  const std::uint64_t markers = align8(*end);
  for (std::size_t k = 0; k < expect.size(); ++k) {
    auto m = w.get<std::uint32_t>(markers + 4 * k);
    if (!m || *m != expect[k]) return std::nullopt;
  }
  *markers_at = markers;
  return align8(markers + 4 * expect.size());
}

std::uint64_t sym_address(std::int32_t off, std::uint64_t relative_base, bool absolute_percpu) {
  if (!absolute_percpu) return relative_base + static_cast<std::uint32_t>(off);
  if (off >= 0) return static_cast<std::uint64_t>(off);
  return relative_base - 1 - static_cast<std::uint64_t>(static_cast<std::int64_t>(off));
}

bool plausible_base(std::optional<std::uint64_t> base) {
  return base && *base >= kKernelTextMin && (*base & 0xfff) == 0;
}

// N offsets at `offsets`: which rule they follow (negative offsets exist only under the absolute
// per-CPU rule), checked by the addresses coming out sorted, as scripts/kallsyms.c sorts them.
std::optional<bool> offsets_rule(const Window& w, std::uint64_t offsets, std::uint32_t n, std::uint64_t relative_base) {
  if (!w.has(offsets, 4ULL * n)) return std::nullopt;
  bool negative = false;
  for (std::uint32_t i = 0; i < n && !negative; ++i) negative = *w.get<std::int32_t>(offsets + 4ULL * i) < 0;
  std::uint64_t prev = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::uint64_t a = sym_address(*w.get<std::int32_t>(offsets + 4ULL * i), relative_base, negative);
    if (a < prev) return std::nullopt;
    prev = a;
  }
  return negative;
}

// kBaseFirst: is there a complete set of tables whose relative_base sits at `q` and whose token
// table is `tt`? (kallsyms_seqs_of_names may sit between the markers and the token table.)
std::optional<KallsymsTables> validate_from_base(const Window& w, std::uint64_t q, const TokenTable& tt,
                                                 const KallsymsLimits& limits) {
  auto base = w.get<std::uint64_t>(q);
  auto n = w.get<std::uint32_t>(q + 8);
  if (!plausible_base(base) || !n || *n == 0 || *n > limits.max_syms) return std::nullopt;
  const std::uint64_t offsets_len = align8(4ULL * *n);
  if (q < offsets_len || !w.has(q - offsets_len, offsets_len)) return std::nullopt;
  std::uint64_t markers = 0;
  auto after = check_names_and_markers(w, q + 16, *n, &markers);
  if (!after) return std::nullopt;
  KallsymsTables t;
  if (*after == tt.table) {
    // no seqs_of_names
  } else if (align8(*after + 3ULL * *n) == tt.table) {
    t.seqs_of_names = GPA{*after};
  } else {
    return std::nullopt;
  }
  auto rule = offsets_rule(w, q - offsets_len, *n, *base);
  if (!rule) return std::nullopt;
  t.layout = KallsymsLayout::kBaseFirst;
  t.offsets = GPA{q - offsets_len};
  t.relative_base_at = GPA{q};
  t.num_syms_at = GPA{q + 8};
  t.names = GPA{q + 16};
  t.markers = GPA{markers};
  t.token_table = GPA{tt.table};
  t.token_index = GPA{tt.index};
  t.num_syms = *n;
  t.relative_base = *base;
  t.absolute_percpu = *rule;
  return t;
}

std::optional<KallsymsTables> find_base_before(const Window& w, const TokenTable& tt, const KallsymsLimits& limits) {
  if (tt.table < w.base + 16) return std::nullopt;
  for (std::uint64_t q = tt.table - 16; q >= w.base; q -= 8) {
    if (auto t = validate_from_base(w, q, tt, limits)) return t;
    if (q < w.base + 8) break;
  }
  return std::nullopt;
}

struct Names {
  std::uint64_t names = 0, markers = 0;
  std::uint32_t n = 0;
};

struct MarkerRun {
  std::uint64_t start = 0, blocks = 0, last = 0;
};

constexpr std::uint64_t kMaxCompressedName = 0x3fff;                 // two-byte ULEB128 length
constexpr std::uint64_t kLastBlockReach = 256 * (kMaxCompressedName + 2);  // 256 names at most

// kallsyms_markers ending at the token table (kTokensFirst, and kBaseFirst without
// seqs_of_names): a strictly increasing u32 run from 0 that ends at the table or at 4 bytes of
// zero padding before it. Yields as many runs as there are ways to read the padding.
std::vector<MarkerRun> marker_runs(const Window& w, std::uint64_t table, const KallsymsLimits& limits) {
  std::vector<MarkerRun> out;
  for (const std::uint64_t end : {table, table - 4}) {
    if (end != table && w.get<std::uint32_t>(end) != std::optional<std::uint32_t>(0)) continue;
    std::uint64_t p = end;
    std::uint32_t prev = UINT32_MAX;
    for (std::uint64_t k = 0; k <= limits.max_syms / 256 + 1 && p >= w.base + 4; ++k) {
      p -= 4;
      auto m = w.get<std::uint32_t>(p);
      if (!m || *m >= prev) break;
      prev = *m;
      if (*m == 0) {
        if (p % 8 == 0) out.push_back(MarkerRun{p, (end - p) / 4, *w.get<std::uint32_t>(end - 4)});
        break;
      }
    }
  }
  return out;
}

// The names before a marker run. The last marker says where the last 256-name block starts;
// kallsyms_num_syms (u32, 8-byte slot) sits right before the names. Each names position is
// checked cheaply (count fits the markers, the last block ends at the markers) before the full
// walk over all names.
std::optional<Names> find_names_before(const Window& w, const MarkerRun& run, std::uint64_t table,
                                       const KallsymsLimits& limits) {
  if (run.start < w.base + run.last + 2 + 8) return std::nullopt;
  const std::uint64_t hi = (run.start - run.last - 2) & ~7ULL;  // the names start at or before this
  const std::uint64_t lo = hi - std::min(hi - w.base, kLastBlockReach);
  for (std::uint64_t names = hi; names >= lo + 8; names -= 8) {
    auto n = w.get<std::uint32_t>(names - 8);
    if (!n || *n <= (run.blocks - 1) * 256 || *n > run.blocks * 256 || *n > limits.max_syms) continue;
    auto tail = walk_names(w, names + run.last, static_cast<std::uint32_t>(*n - (run.blocks - 1) * 256), nullptr);
    if (!tail || align8(*tail) != run.start) continue;
    std::uint64_t markers = 0;
    auto after = check_names_and_markers(w, names, *n, &markers);
    if (!after || markers != run.start || *after != table) continue;
    return Names{names, markers, *n};
  }
  return std::nullopt;
}

std::optional<Names> find_names_ending_at(const mem::PhysMem& mem, std::uint64_t table, const KallsymsLimits& limits) {
  const std::uint64_t markers_reach = 4 * (limits.max_syms / 256 + 2) + 8;
  auto tail = read_window(mem, table - std::min(table, markers_reach), table + 1);
  if (!tail) return std::nullopt;
  for (const MarkerRun& run : marker_runs(*tail, table, limits)) {
    const std::uint64_t reach = std::min(run.last + kLastBlockReach + 16, limits.max_backscan);
    auto w = read_window(mem, run.start - std::min(run.start, reach), table + 1);
    if (!w) continue;
    if (auto names = find_names_before(*w, run, table, limits)) return names;
  }
  return std::nullopt;
}

// The tables around a confirmed token table, in whichever layout the kernel has; `why` says what
// was found when nothing complete was.
std::optional<KallsymsTables> tables_at(const mem::PhysMem& mem, const TokenTable& tt, const KallsymsLimits& limits,
                                        std::string& why) {
  if (auto names = find_names_ending_at(mem, tt.table, limits)) {
    const std::uint32_t n = names->n;
    KallsymsTables t;
    t.num_syms_at = GPA{names->names - 8};
    t.names = GPA{names->names};
    t.markers = GPA{names->markers};
    t.token_table = GPA{tt.table};
    t.token_index = GPA{tt.index};
    t.num_syms = n;
    // Linux >= 6.4: offsets and relative_base follow the token index, seqs_of_names after them.
    const std::uint64_t offsets = align8(tt.index + 512), rb_at = align8(offsets + 4ULL * n);
    auto after = read_window(mem, offsets, rb_at + 8 + 3ULL * n);
    if (after) {
      auto base = after->get<std::uint64_t>(rb_at);
      if (plausible_base(base) && after->has(rb_at + 8, 3ULL * n)) {
        if (auto rule = offsets_rule(*after, offsets, n, *base)) {
          t.layout = KallsymsLayout::kTokensFirst;
          t.offsets = GPA{offsets};
          t.relative_base_at = GPA{rb_at};
          t.seqs_of_names = GPA{rb_at + 8};
          t.relative_base = *base;
          t.absolute_percpu = *rule;
          return t;
        }
      }
    }
    // Linux <= 6.3 without seqs_of_names: relative_base right before num_syms, offsets before it.
    const std::uint64_t rb_before = t.num_syms_at.value - 8, off_len = align8(4ULL * n);
    auto before = read_window(mem, rb_before - std::min(rb_before, off_len), rb_before + 8);
    auto base = before ? before->get<std::uint64_t>(rb_before) : std::nullopt;
    if (plausible_base(base) && rb_before >= before->base + off_len) {
      if (auto rule = offsets_rule(*before, rb_before - off_len, n, *base)) {
        t.layout = KallsymsLayout::kBaseFirst;
        t.offsets = GPA{rb_before - off_len};
        t.relative_base_at = GPA{rb_before};
        t.relative_base = *base;
        t.absolute_percpu = *rule;
        return t;
      }
    }
    why = fmt::format(
        "{} kallsyms_names and kallsyms_markers end at token table {:#x}, but no sorted kallsyms_offsets with a "
        "kallsyms_relative_base after the token index (Linux >= 6.4) or before kallsyms_num_syms (<= 6.3); "
        "PC-relative or absolute kallsyms tables are not handled",
        n, tt.table);
    return std::nullopt;
  }
  auto before = read_window(mem, tt.table > limits.max_backscan ? tt.table - limits.max_backscan : 0, tt.table + 1);
  if (!before) {
    why = before.error().message;
    return std::nullopt;
  }
  if (auto t = find_base_before(*before, tt, limits)) return t;
  why = fmt::format("token table at {:#x}: no kallsyms_num_syms/names/markers ending at it (Linux >= 6.4 layout) "
                    "and no kallsyms_relative_base/num_syms/names/markers before it (<= 6.3 layout)",
                    tt.table);
  return std::nullopt;
}

}  // namespace

const char* to_string(KallsymsLayout l) {
  return l == KallsymsLayout::kTokensFirst ? "names first, offsets after the token index (Linux >= 6.4)"
                                           : "offsets and relative base first (Linux <= 6.3)";
}

std::uint64_t KallsymsTables::span_begin() const {
  return layout == KallsymsLayout::kTokensFirst ? num_syms_at.value : offsets.value;
}

std::uint64_t KallsymsTables::span_end() const {
  if (layout == KallsymsLayout::kTokensFirst)
    return seqs_of_names ? seqs_of_names->value + 3ULL * num_syms : relative_base_at.value + 8;
  return token_index.value + 512;
}

Result<KallsymsTables> locate_kallsyms(const mem::PhysMem& mem, const KallsymsLimits& limits,
                                       const std::function<bool(const KallsymsTables&)>& accept,
                                       const std::vector<PhysRange>* regions, KallsymsScanStats* stats) {
  // Each digit run is tried as soon as the scan meets it, so the scan stops at the kernel's
  // tables instead of reading the rest of RAM.
  std::size_t hits = 0, token_tables = 0, complete = 0;
  std::string rejected;
  std::optional<KallsymsTables> found;
  auto try_hit = [&](std::uint64_t hit) {
    auto near = read_window(mem, hit > kMaxTokenTable ? hit - kMaxTokenTable : 0, hit + kMaxTokenTable + 512);
    if (!near) return;
    auto tt = validate_token_table(*near, hit);
    if (!tt) return;
    ++token_tables;
    std::string why;
    auto t = tables_at(mem, *tt, limits, why);
    if (!t) {
      rejected += "; " + why;
      return;
    }
    ++complete;
    if (accept && !accept(*t)) {
      rejected += fmt::format("; tables at {:#x} rejected by the page tables", t->token_table.value);
      return;
    }
    found = *t;
  };
  std::size_t budget_end = kMaxDigitRuns;   // per region: a region full of planted runs cannot starve the next
  auto scan = [&](const mem::Extent& e) {
    const auto* begin = reinterpret_cast<const char*>(e.bytes.data());
    const char* p = begin;
    std::size_t left = e.bytes.size();
    while (left >= kDigitTokensLen && hits < budget_end && !found) {
      const void* f = ::memmem(p, left, kDigitTokens, kDigitTokensLen);
      if (f == nullptr) break;
      const auto off = static_cast<std::uint64_t>(static_cast<const char*>(f) - begin);
      // Token "0" must follow another token's NUL.
      if (off > 0 && begin[off - 1] == 0) {
        ++hits;
        try_hit(e.base.value + off);
      }
      const auto consumed = off + 1 - static_cast<std::uint64_t>(p - begin);
      p += consumed;
      left -= consumed;
    }
    return hits < budget_end && !found;
  };
  if (regions == nullptr) {
    mem.for_each_extent(scan);
  } else {
    // Region by region, in the order given, each with its own budget; only the parts of the
    // extents inside the region are read (token "0" is never a table's first byte, so a run at a
    // region's very start is no candidate and nothing before the start is needed).
    for (const PhysRange& r : *regions) {
      budget_end = hits + kMaxDigitRuns;
      mem.for_each_extent([&](const mem::Extent& e) {
        const std::uint64_t eb = e.base.value, ee = eb + e.bytes.size();
        const std::uint64_t b = std::max(eb, r.begin), en = std::min(ee, r.end);
        if (b >= en) return true;
        return scan(mem::Extent{GPA{b}, e.bytes.subspan(b - eb, en - b)});
      });
      if (found) break;
    }
  }
  if (stats) *stats = KallsymsScanStats{hits, token_tables, complete};
  if (found) return *found;
  if (token_tables == 0)
    return make_error("kallsyms token table not found in {} of RAM ({} candidate digit runs)", mem::human_size(mem.size()),
                      hits);
  return make_error("kallsyms tables not found in {} of RAM{}", mem::human_size(mem.size()), rejected);
}

Result<KallsymsTables> validate_kallsyms_at(const mem::PhysMem& mem, GPA relative_base_at, GPA token_table,
                                            const KallsymsLimits& limits) {
  const std::uint64_t rb = relative_base_at.value, tab = token_table.value;
  if (rb == tab || (rb < tab ? tab - rb : rb - tab) > limits.max_backscan)
    return make_error("cached kallsyms positions are inconsistent");
  auto near = read_window(mem, tab, tab + kMaxTokenTable + 512);
  if (!near) return std::move(near).error();
  // validate_token_table wants the address of token 48 ("0"): walk 48 tokens from the start.
  std::uint64_t p = tab;
  for (int i = 0; i < 48; ++i) {
    auto n = token_len(*near, p);
    if (!n) return make_error("no kallsyms token table at {:#x}", tab);
    p += *n + 1;
  }
  auto tt = validate_token_table(*near, p);
  if (!tt || tt->table != tab) return make_error("no kallsyms token table at {:#x}", tab);
  if (rb < tab) {
    // kBaseFirst: check at exactly the cached position (no scan).
    auto before = read_window(mem, rb - std::min(rb, limits.max_backscan / 2), tab + 1);
    if (!before) return std::move(before).error();
    if (auto t = validate_from_base(*before, rb, *tt, limits)) return *t;
  }
  std::string why;
  auto t = tables_at(mem, *tt, limits, why);
  if (!t) return make_error("no kallsyms tables at {:#x}..{:#x}: {}", std::min(rb, tab), std::max(rb, tab), why);
  if (t->relative_base_at != relative_base_at)
    return make_error("kallsyms_relative_base is at {:#x}, not at the cached {:#x}", t->relative_base_at.value, rb);
  return *t;
}

Result<std::vector<Symbol>> decode_kallsyms(const mem::PhysMem& mem, const KallsymsTables& t) {
  if (t.span_end() <= t.span_begin() || t.span_end() - t.span_begin() > (256ULL << 20))
    return make_error("kallsyms tables at {:#x}..{:#x} are implausible", t.span_begin(), t.span_end());
  auto w = read_window(mem, t.span_begin(), t.span_end());
  if (!w) return std::move(w).error();
  std::array<std::string, 256> tokens;
  for (std::size_t i = 0; i < 256; ++i) {
    auto idx = w->get<std::uint16_t>(t.token_index.value + 2 * i);
    if (!idx) return make_error("kallsyms token index at {:#x} is truncated", t.token_index.value);
    auto n = token_len(*w, t.token_table.value + *idx);
    if (!n) return make_error("kallsyms token {} at {:#x} is malformed", i, t.token_table.value + *idx);
    tokens[i].assign(reinterpret_cast<const char*>(w->at(t.token_table.value + *idx)), *n);
  }
  std::vector<Symbol> out;
  out.reserve(t.num_syms);
  std::uint64_t p = t.names.value;
  std::string expanded;
  for (std::uint32_t i = 0; i < t.num_syms; ++i) {
    auto b0 = w->get<std::uint8_t>(p);
    if (!b0) return make_error("kallsyms name {} at {:#x} is truncated", i, p);
    std::uint64_t len = *b0;
    ++p;
    if ((*b0 & 0x80) != 0) {
      auto b1 = w->get<std::uint8_t>(p);
      if (!b1) return make_error("kallsyms name {} at {:#x} is truncated", i, p);
      len = (*b0 & 0x7fU) | (static_cast<std::uint64_t>(*b1) << 7);
      ++p;
    }
    if (!w->has(p, len)) return make_error("kallsyms name {} at {:#x} runs past the tables", i, p);
    expanded.clear();
    for (std::uint64_t k = 0; k < len; ++k) expanded += tokens[static_cast<std::uint8_t>(w->at(p)[k])];
    p += len;
    if (expanded.empty()) return make_error("kallsyms name {} is empty", i);
    auto off = w->get<std::int32_t>(t.offsets.value + 4ULL * i);
    if (!off) return make_error("kallsyms offset {} is truncated", i);
    out.push_back(Symbol{expanded.substr(1), expanded[0], GVA{sym_address(*off, t.relative_base, t.absolute_percpu)}});
  }
  return out;
}

Result<KallsymsTables> write_kallsyms_for_test(mem::FakeMem& mem, GPA base, const std::vector<Symbol>& syms,
                                               std::uint64_t relative_base, bool with_seqs, KallsymsLayout layout,
                                               bool absolute_percpu) {
  // Tokens: every byte value is its own one-character token, except 0x00 and 0x01, which stand
  // for the pairs "__" and "_t" (so decoding must expand multi-character tokens).
  std::array<std::string, 256> tokens;
  for (int i = 0; i < 256; ++i) tokens[static_cast<std::size_t>(i)] = std::string(1, static_cast<char>(i));
  tokens[0] = "__";
  tokens[1] = "_t";
  std::vector<std::byte> blob;
  auto put = [&](const void* p, std::size_t n) {
    const auto* b = static_cast<const std::byte*>(p);
    blob.insert(blob.end(), b, b + n);
  };
  auto pad8 = [&] { blob.resize(align8(blob.size())); };
  auto here = [&] { return GPA{base.value + blob.size()}; };
  const auto n = static_cast<std::uint32_t>(syms.size());
  KallsymsTables t;
  t.layout = layout;
  t.num_syms = n;
  t.relative_base = relative_base;
  t.absolute_percpu = absolute_percpu;

  auto put_offsets = [&]() -> Result<void> {
    t.offsets = here();
    for (const auto& s : syms) {
      std::int64_t off = 0;
      if (absolute_percpu)
        off = s.addr.value < relative_base ? static_cast<std::int64_t>(s.addr.value)
                                           : -static_cast<std::int64_t>(s.addr.value - relative_base) - 1;
      else if (s.addr.value >= relative_base)
        off = static_cast<std::int64_t>(static_cast<std::int32_t>(static_cast<std::uint32_t>(s.addr.value - relative_base)));
      else
        return make_error("symbol {} lies below relative_base without absolute per-CPU symbols", s.name);
      auto v = static_cast<std::int32_t>(off);
      put(&v, 4);
    }
    pad8();
    return {};
  };
  auto put_base = [&] {
    t.relative_base_at = here();
    put(&relative_base, 8);
  };
  auto put_num_syms = [&] {
    t.num_syms_at = here();
    put(&n, 4);
    pad8();
  };
  auto put_names_and_markers = [&] {
    t.names = here();
    std::vector<std::uint32_t> markers;
    const std::size_t names_start = blob.size();
    for (std::uint32_t i = 0; i < n; ++i) {
      if (i % 256 == 0) markers.push_back(static_cast<std::uint32_t>(blob.size() - names_start));
      std::string full = std::string(1, syms[i].type) + syms[i].name;
      std::string comp;
      for (std::size_t k = 0; k < full.size(); ++k) {
        if (full.compare(k, 2, "__") == 0) comp += '\0', ++k;
        else if (full.compare(k, 2, "_t") == 0) comp += '\x01', ++k;
        else comp += full[k];
      }
      if (comp.size() > 127) {
        std::uint8_t l[2] = {static_cast<std::uint8_t>((comp.size() & 0x7f) | 0x80), static_cast<std::uint8_t>(comp.size() >> 7)};
        put(l, 2);
      } else {
        auto l = static_cast<std::uint8_t>(comp.size());
        put(&l, 1);
      }
      put(comp.data(), comp.size());
    }
    pad8();
    t.markers = here();
    put(markers.data(), markers.size() * 4);
    pad8();
  };
  auto put_seqs = [&] {  // symbol indexes in name order, 3 bytes big-endian each
    t.seqs_of_names = here();
    std::vector<std::uint32_t> order(n);
    for (std::uint32_t i = 0; i < n; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) { return syms[a].name < syms[b].name; });
    for (std::uint32_t i : order) {
      const std::uint8_t b[3] = {static_cast<std::uint8_t>(i >> 16), static_cast<std::uint8_t>(i >> 8), static_cast<std::uint8_t>(i)};
      put(b, 3);
    }
    pad8();
  };
  auto put_tokens = [&] {
    t.token_table = here();
    std::array<std::uint16_t, 256> index{};
    const std::size_t tt_start = blob.size();
    for (std::size_t i = 0; i < 256; ++i) {
      index[i] = static_cast<std::uint16_t>(blob.size() - tt_start);
      put(tokens[i].c_str(), tokens[i].size() + 1);
    }
    pad8();
    t.token_index = here();
    put(index.data(), sizeof index);
    pad8();
  };

  if (layout == KallsymsLayout::kBaseFirst) {
    HVTRACE_TRY(put_offsets());
    put_base();
    put_num_syms();
    put_names_and_markers();
    if (with_seqs) put_seqs();
    put_tokens();
  } else {
    put_num_syms();
    put_names_and_markers();
    put_tokens();
    HVTRACE_TRY(put_offsets());
    put_base();
    put_seqs();
  }
  HVTRACE_TRY(mem.write(base, blob));
  return t;
}

}  // namespace hvtrace::kernel
