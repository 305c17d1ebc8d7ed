// See syscall_meta.hpp. Reads: kallsyms once (all_symbols), then per record one struct read, the
// name, and at most kMaxArgs type and argument-name pointers and strings; sys_call_table in one
// read of at most kMaxTable pointers, each resolved through a SymbolIndex.
#include "kernel/syscall_meta.hpp"

#include "kernel/kernel.hpp"
#include "kernel/symbol_index.hpp"

#include <algorithm>
#include <cstring>

namespace hvtrace::kernel {
namespace {

constexpr std::string_view kMetaPrefix = "__syscall_meta__";
constexpr std::string_view kX64Prefix = "__x64_sys_";
constexpr std::string_view kIa32Prefix = "__ia32_sys_";
constexpr std::string_view kIa32CompatPrefix = "__ia32_compat_sys_";
constexpr std::uint64_t kMaxBtf = 64ULL << 20;
using Limits = SyscallMetaLimits;

struct MetaLayout {
  Field name{0, 8}, syscall_nr{8, 4}, nb_args{12, 4}, types{16, 8}, args{24, 8};  // 6.1, x86-64
  std::string origin = "the 6.1 x86-64 layout of struct syscall_metadata (BTF lacks it)";

  [[nodiscard]] std::uint64_t extent() const {
    std::uint64_t e = 0;
    for (const Field* f : {&name, &syscall_nr, &nb_args, &types, &args}) e = std::max(e, f->offset + f->size);
    return e;
  }
  [[nodiscard]] bool plausible() const {
    return name.size == 8 && types.size == 8 && args.size == 8 && syscall_nr.size == 4 && nb_args.size == 4 &&
           extent() <= 256;
  }
};

constexpr const char* kMembers[] = {"name", "syscall_nr", "nb_args", "types", "args"};

std::optional<MetaLayout> layout_from(const Profile& p, const std::string& origin) {
  MetaLayout l;
  Field* out[] = {&l.name, &l.syscall_nr, &l.nb_args, &l.types, &l.args};
  for (std::size_t i = 0; i < std::size(kMembers); ++i) {
    auto f = p.field(std::string("syscall_metadata.") + kMembers[i]);
    if (!f) return std::nullopt;
    *out[i] = *f;
  }
  l.origin = origin;
  return l;
}

// The profile's BTF fields (profiles made since syscall_metadata was a wanted field), else the
// BTF blob in guest memory (older cached profiles, profile files), else the 6.1 layout.
Result<MetaLayout> meta_layout(const Kernel& k) {
  if (auto l = layout_from(k.profile(), "BTF (struct syscall_metadata, fields in the profile)")) return *l;
  auto b = k.symbol("__start_BTF");
  auto e = k.symbol("__stop_BTF");
  if (b && e && e->value > b->value && e->value - b->value <= kMaxBtf) {
    std::vector<std::byte> blob(e->value - b->value);
    if (k.read(*b, blob)) {
      Profile scratch;
      // Fails if BTF lacks fields ps needs; the syscall_metadata fields are filled regardless.
      (void)add_fields_from_btf(scratch, blob, "guest memory");
      if (auto l = layout_from(scratch, fmt::format("BTF in guest memory at {:#x} (struct syscall_metadata)", b->value)))
        return *l;
    }
  }
  return MetaLayout{};
}

bool is_ident(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

bool is_printable(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

// A NUL-terminated string of at most kMaxString bytes; no NUL within them is an error.
Result<std::string> read_bounded_string(const Kernel& k, GVA va, const char* what) {
  auto s = k.read_string(va, Limits::kMaxString + 1);
  if (!s) return std::move(s).with_context(fmt::format("{} at {:#x}", what, va.value)).error();
  if (s->size() > Limits::kMaxString)
    return make_error("{} at {:#x} is not terminated within {} bytes", what, va.value, Limits::kMaxString);
  return s;
}

template <typename T>
T field_value(const std::vector<std::byte>& rec, const Field& f) {
  T v{};
  std::memcpy(&v, rec.data() + f.offset, sizeof(T));
  return v;
}

Result<std::vector<std::string>> read_string_array(const Kernel& k, GVA array, std::size_t n, bool identifiers,
                                                   const char* what) {
  std::vector<std::uint64_t> ptrs(n);
  HVTRACE_TRY(k.read(array, std::as_writable_bytes(std::span(ptrs))).with_context(fmt::format("{} array at {:#x}", what, array.value)));
  std::vector<std::string> out;
  for (std::size_t i = 0; i < n; ++i) {
    auto s = read_bounded_string(k, GVA{ptrs[i]}, what);
    if (!s) return std::move(s).error();
    if (identifiers ? !is_ident(*s) : !is_printable(*s)) return make_error("{} {} is not plausible", what, i);
    out.push_back(std::move(*s));
  }
  return out;
}

Result<SyscallMeta> read_meta(const Kernel& k, GVA at, const MetaLayout& l) {
  std::vector<std::byte> rec(l.extent());
  HVTRACE_TRY(k.read(at, rec));
  SyscallMeta m;
  auto name = read_bounded_string(k, GVA{field_value<std::uint64_t>(rec, l.name)}, "name");
  if (!name) return std::move(name).error();
  if (name->rfind("sys_", 0) != 0 || !is_ident(*name)) return make_error("name is not sys_<identifier>");
  m.name = name->substr(4);
  m.nr = field_value<std::int32_t>(rec, l.syscall_nr);
  const std::int32_t nb = field_value<std::int32_t>(rec, l.nb_args);
  if (nb < 0 || static_cast<std::size_t>(nb) > Limits::kMaxArgs) return make_error("nb_args {} is out of range", nb);
  if (nb > 0) {
    const auto n = static_cast<std::size_t>(nb);
    auto types = read_string_array(k, GVA{field_value<std::uint64_t>(rec, l.types)}, n, false, "type");
    if (!types) return std::move(types).error();
    auto args = read_string_array(k, GVA{field_value<std::uint64_t>(rec, l.args)}, n, true, "argument name");
    if (!args) return std::move(args).error();
    m.types = std::move(*types);
    m.args = std::move(*args);
  }
  return m;
}

void reject(GuestSyscalls& g, std::string why) {
  ++g.rejected;
  if (g.problems.size() < Limits::kMaxProblems) g.problems.push_back(std::move(why));
}

// The x86-64 entry point of one sys_call_table slot: the __x64_sys_ name at its address (the
// lexically first if aliases share it), "" for none.
std::string x64_name_at(const SymbolIndex& idx, GVA fn) {
  std::string best;
  for (const Symbol& s : idx.at(fn)) {
    if (s.name.rfind(kX64Prefix, 0) != 0) continue;
    std::string n = s.name.substr(kX64Prefix.size());
    if (best.empty() || n < best) best = std::move(n);
  }
  return best;
}

void read_table(const Kernel& k, const SymbolIndex& idx, GVA table, GuestSyscalls& g) {
  // kallsyms has no sizes: the table ends where the next symbol starts.
  std::size_t n = Limits::kMaxTable;
  if (auto next = idx.next_after(table)) n = std::min<std::size_t>(n, (next->value - table.value) / 8);
  std::vector<std::uint64_t> fns(n);
  if (auto r = k.read(table, std::as_writable_bytes(std::span(fns))); !r) {
    reject(g, fmt::format("sys_call_table at {:#x} ({} entries): {}", table.value, n, r.error().message));
    return;
  }
  for (std::size_t nr = 0; nr < n; ++nr) {
    if (fns[nr] == 0) break;  // alignment padding before the next symbol; the kernel fills every slot
    std::string name = x64_name_at(idx, GVA{fns[nr]});
    if (name == "ni_syscall") continue;
    if (name.empty()) {
      reject(g, fmt::format("sys_call_table[{}] = {:#x} is not a __x64_sys_ function", nr, fns[nr]));
      continue;
    }
    g.x64_table.emplace(static_cast<std::uint32_t>(nr), std::move(name));
  }
}

}  // namespace

Result<GuestSyscalls> read_guest_syscalls(const Kernel& k) {
  auto syms = k.all_symbols();
  if (!syms) return std::move(syms).with_context("guest syscalls: kernel symbols").error();
  auto layout = meta_layout(k);
  if (!layout) return std::move(layout).error();
  if (!layout->plausible()) return make_error("guest syscalls: implausible struct syscall_metadata layout ({})", layout->origin);
  GuestSyscalls g;
  std::optional<GVA> table = k.symbol("sys_call_table");
  std::size_t records = 0;
  for (const Symbol& s : *syms) {
    const std::string_view n = s.name;
    if (n.rfind(kMetaPrefix, 0) == 0) {
      if (++records > Limits::kMaxRecords) continue;
      auto m = read_meta(k, s.addr, *layout);
      if (m) g.meta.push_back(std::move(*m));
      else reject(g, fmt::format("{} at {:#x}: {}", n, s.addr.value, m.error().message));
    } else if (n.rfind(kIa32Prefix, 0) == 0 || n.rfind(kIa32CompatPrefix, 0) == 0) {
      const bool compat = n.rfind(kIa32CompatPrefix, 0) == 0;
      if (g.ia32_names.size() < Limits::kMaxIa32Names)
        g.ia32_names.emplace(n.substr(compat ? kIa32CompatPrefix.size() : kIa32Prefix.size()));
    } else if (!table && n == "sys_call_table") {
      table = s.addr;
    }
  }
  if (records > Limits::kMaxRecords)
    reject(g, fmt::format("{} __syscall_meta__ symbols; only the first {} were read", records, Limits::kMaxRecords));
  if (table) read_table(k, SymbolIndex(std::move(*syms)), *table, g);
  else reject(g, "no sys_call_table symbol");
  if (g.meta.empty() && g.x64_table.empty())
    return make_error("guest syscalls: the kernel has neither syscall metadata (CONFIG_FTRACE_SYSCALLS) nor a "
                      "readable sys_call_table{}",
                      g.problems.empty() ? "" : " (" + g.problems.front() + ")");
  g.source = fmt::format("guest memory ({} symbols; layout from {})", records, layout->origin);
  return g;
}

Result<GuestSyscalls> guest_syscalls(const Kernel& k, const std::optional<std::filesystem::path>& save_dir) {
  if (k.profile().syscalls) return *k.profile().syscalls;
  auto g = read_guest_syscalls(k);
  if (!g || !save_dir) return g;
  const auto file = *save_dir / (k.profile().key() + ".json");
  if (auto r = store_syscalls_in_profile_file(k.profile(), *g, file); r) g->source += ", saved to " + file.string();
  else g->source += ", not saved: " + r.error().message;
  return g;
}

std::vector<std::string> compare_syscall_tables(
    const GuestSyscalls& guest, const std::function<std::optional<std::string>(unsigned nr)>& x64_name_of,
    const std::function<std::optional<std::string>(unsigned nr)>& i386_entry_of) {
  std::vector<std::string> out;
  auto describe = [](const std::optional<std::string>& n) { return n ? *n : std::string("none"); };
  for (unsigned nr = 0; nr < Limits::kMaxTable; ++nr) {
    auto it = guest.x64_table.find(nr);
    const std::optional<std::string> g = it != guest.x64_table.end() ? std::optional(it->second) : std::nullopt;
    const std::optional<std::string> c = x64_name_of(nr);
    if (g != c) out.push_back(fmt::format("x86-64 nr {}: guest has {}, compiled-in has {}", nr, describe(g), describe(c)));
  }
  for (const SyscallMeta& m : guest.meta) {
    if (m.nr < 0 || static_cast<std::size_t>(m.nr) >= Limits::kMaxTable) continue;
    const auto c = x64_name_of(static_cast<unsigned>(m.nr));
    // A name the table already reported is not repeated; metadata can disagree on its own when
    // two numbers share one function (the kernel keeps the last number it saw).
    if (c != m.name && guest.x64_table.count(static_cast<std::uint32_t>(m.nr)) == 0)
      out.push_back(fmt::format("x86-64 nr {}: guest metadata has {}, compiled-in has {}", m.nr, m.name, describe(c)));
  }
  if (!guest.ia32_names.empty())   // a kernel without IA32_EMULATION has none at all
    for (unsigned nr = 0; nr < Limits::kMaxTable; ++nr)
      if (const auto c = i386_entry_of(nr)) {
        bool found = false;
        for (std::size_t at = 0; at <= c->size() && !found;) {   // any of the '|'-separated names
          const std::size_t bar = std::min(c->find('|', at), c->size());
          found = guest.ia32_names.count(c->substr(at, bar - at)) != 0;
          at = bar + 1;
        }
        if (!found) out.push_back(fmt::format("i386 nr {}: guest has none, compiled-in has {}", nr, *c));
      }
  return out;
}

}  // namespace hvtrace::kernel
