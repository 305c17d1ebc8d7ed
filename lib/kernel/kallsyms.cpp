// kallsyms extraction from guest physical memory; see kallsyms.hpp for the layout and invariants.
#include "kernel/kallsyms.hpp"

#include <algorithm>
#include <array>
#include <cstring>

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
  std::uint64_t base = 0;
  std::vector<std::byte> bytes;
  [[nodiscard]] bool has(std::uint64_t pa, std::uint64_t n) const {
    return pa >= base && mem::in_range(pa - base, n, bytes.size());
  }
  template <typename T>
  [[nodiscard]] std::optional<T> get(std::uint64_t pa) const {
    if (!has(pa, sizeof(T))) return std::nullopt;
    T v;
    std::memcpy(&v, bytes.data() + (pa - base), sizeof(T));
    return v;
  }
  [[nodiscard]] const std::byte* at(std::uint64_t pa) const { return bytes.data() + (pa - base); }
};

Result<Window> read_window(const mem::PhysMem& mem, std::uint64_t from, std::uint64_t to) {
  from = std::min(from, mem.size());
  to = std::min(to, mem.size());
  Window w;
  w.base = from;
  if (to <= from) return w;
  w.bytes.resize(to - from);
  HVTRACE_TRY(mem.read(GPA{from}, w.bytes));
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

// Walk N compressed names starting at `names`; returns the end, and checks each marker on the way.
// Names longer than 127 bytes use a two-byte length (bit 7 set in the first byte).
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

// Is there a complete set of tables whose relative_base sits at `q` and whose token table is `tt`?
std::optional<KallsymsTables> validate_from_base(const Window& w, std::uint64_t q, const TokenTable& tt,
                                                 const KallsymsLimits& limits) {
  auto base = w.get<std::uint64_t>(q);
  auto n = w.get<std::uint32_t>(q + 8);
  if (!base || !n || *base < kKernelTextMin || (*base & 0xfff) != 0 || *n == 0 || *n > limits.max_syms)
    return std::nullopt;
  const std::uint64_t offsets_len = align8(4ULL * *n);
  if (q < offsets_len || !w.has(q - offsets_len, offsets_len)) return std::nullopt;
  std::vector<std::uint32_t> expect;
  expect.reserve(*n / 256 + 1);
  auto names_end = walk_names(w, q + 16, *n, &expect);
  if (!names_end) return std::nullopt;
  const std::uint64_t markers = align8(*names_end);
  for (std::size_t k = 0; k < expect.size(); ++k) {
    auto m = w.get<std::uint32_t>(markers + 4 * k);
    if (!m || *m != expect[k]) return std::nullopt;
  }
  const std::uint64_t after = align8(markers + 4 * expect.size());
  KallsymsTables t;
  if (after == tt.table) {
    // no seqs_of_names
  } else if (align8(after + 3ULL * *n) == tt.table) {
    t.seqs_of_names = GPA{after};
  } else {
    return std::nullopt;
  }
  t.offsets = GPA{q - offsets_len};
  t.relative_base_at = GPA{q};
  t.names = GPA{q + 16};
  t.markers = GPA{markers};
  t.token_table = GPA{tt.table};
  t.token_index = GPA{tt.index};
  t.num_syms = *n;
  t.relative_base = *base;
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

}  // namespace

Result<KallsymsTables> locate_kallsyms(const mem::PhysMem& mem, const KallsymsLimits& limits,
                                       const std::function<bool(const KallsymsTables&)>& accept) {
  std::vector<std::uint64_t> hits;
  mem.for_each_extent([&](const mem::Extent& e) {
    const auto* begin = reinterpret_cast<const char*>(e.bytes.data());
    const char* p = begin;
    std::size_t left = e.bytes.size();
    while (left >= kDigitTokensLen && hits.size() < 4096) {
      const void* f = ::memmem(p, left, kDigitTokens, kDigitTokensLen);
      if (f == nullptr) break;
      const auto off = static_cast<std::uint64_t>(static_cast<const char*>(f) - begin);
      // Token "0" must follow another token's NUL.
      if (off > 0 && begin[off - 1] == 0) hits.push_back(e.base.value + off);
      const auto consumed = off + 1 - static_cast<std::uint64_t>(p - begin);
      p += consumed;
      left -= consumed;
    }
    return hits.size() < 4096;
  });
  std::size_t token_tables = 0;
  std::string rejected;
  for (std::uint64_t hit : hits) {
    auto near = read_window(mem, hit > kMaxTokenTable ? hit - kMaxTokenTable : 0, hit + kMaxTokenTable + 512);
    if (!near) continue;
    auto tt = validate_token_table(*near, hit);
    if (!tt) continue;
    ++token_tables;
    auto before = read_window(mem, tt->table > limits.max_backscan ? tt->table - limits.max_backscan : 0,
                              tt->table + 1);
    if (!before) continue;
    auto t = find_base_before(*before, *tt, limits);
    if (!t) {
      rejected += fmt::format("; token table at {:#x}: no kallsyms_relative_base/num_syms/names/markers before it",
                              tt->table);
      continue;
    }
    if (accept && !accept(*t)) {
      rejected += fmt::format("; tables at {:#x} rejected by the page tables", t->token_table.value);
      continue;
    }
    return *t;
  }
  if (token_tables == 0)
    return make_error("kallsyms token table not found in {} of RAM ({} candidate digit runs)", mem::human_size(mem.size()),
                      hits.size());
  return make_error("kallsyms tables not found in {} of RAM{}", mem::human_size(mem.size()), rejected);
}

Result<KallsymsTables> validate_kallsyms_at(const mem::PhysMem& mem, GPA relative_base_at, GPA token_table,
                                            const KallsymsLimits& limits) {
  if (token_table.value <= relative_base_at.value || token_table.value - relative_base_at.value > limits.max_backscan)
    return make_error("cached kallsyms positions are inconsistent");
  auto near = read_window(mem, token_table.value, token_table.value + kMaxTokenTable + 512);
  if (!near) return std::move(near).error();
  // validate_token_table wants the address of token 48 ("0"): walk 48 tokens from the start.
  std::uint64_t p = token_table.value;
  for (int i = 0; i < 48; ++i) {
    auto n = token_len(*near, p);
    if (!n) return make_error("no kallsyms token table at {:#x}", token_table.value);
    p += *n + 1;
  }
  auto tt = validate_token_table(*near, p);
  if (!tt || tt->table != token_table.value) return make_error("no kallsyms token table at {:#x}", token_table.value);
  auto before = read_window(mem, relative_base_at.value - std::min(relative_base_at.value, limits.max_backscan / 2),
                            token_table.value + 1);
  if (!before) return std::move(before).error();
  auto t = validate_from_base(*before, relative_base_at.value, *tt, limits);
  if (!t) return make_error("no kallsyms tables at {:#x}..{:#x}", relative_base_at.value, token_table.value);
  return *t;
}

Result<std::vector<Symbol>> decode_kallsyms(const mem::PhysMem& mem, const KallsymsTables& t) {
  auto w = read_window(mem, t.offsets.value, t.token_index.value + 512);
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
    const std::uint64_t addr = *off >= 0 ? static_cast<std::uint64_t>(*off)
                                         : t.relative_base - 1 - static_cast<std::uint64_t>(static_cast<std::int64_t>(*off));
    out.push_back(Symbol{expanded.substr(1), expanded[0], GVA{addr}});
  }
  return out;
}

Result<KallsymsTables> write_kallsyms_for_test(mem::FakeMem& mem, GPA base, const std::vector<Symbol>& syms,
                                               std::uint64_t relative_base, bool with_seqs) {
  // Tokens: every byte value is its own one-character token, except 0x01, which stands for the
  // pair "_t" (so decoding must expand multi-character tokens), and 0x00 ("\x01" is unused in names).
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
  const std::uint32_t n = static_cast<std::uint32_t>(syms.size());
  KallsymsTables t;
  t.offsets = base;
  for (const auto& s : syms) {
    std::int32_t off = s.addr.value < relative_base ? static_cast<std::int32_t>(s.addr.value)
                                                   : static_cast<std::int32_t>(-static_cast<std::int64_t>(s.addr.value - relative_base) - 1);
    put(&off, 4);
  }
  pad8();
  t.relative_base_at = GPA{base.value + blob.size()};
  put(&relative_base, 8);
  put(&n, 4);
  pad8();
  t.names = GPA{base.value + blob.size()};
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
  t.markers = GPA{base.value + blob.size()};
  put(markers.data(), markers.size() * 4);
  pad8();
  if (with_seqs) {
    t.seqs_of_names = GPA{base.value + blob.size()};
    blob.resize(blob.size() + 3ULL * n);
    pad8();
  }
  t.token_table = GPA{base.value + blob.size()};
  std::array<std::uint16_t, 256> index{};
  const std::size_t tt_start = blob.size();
  for (std::size_t i = 0; i < 256; ++i) {
    index[i] = static_cast<std::uint16_t>(blob.size() - tt_start);
    put(tokens[i].c_str(), tokens[i].size() + 1);
  }
  pad8();
  t.token_index = GPA{base.value + blob.size()};
  put(index.data(), sizeof index);
  t.num_syms = n;
  t.relative_base = relative_base;
  HVTRACE_TRY(mem.write(base, blob));
  return t;
}

}  // namespace hvtrace::kernel
