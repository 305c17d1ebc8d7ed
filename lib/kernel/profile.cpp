// Profiles: BTF layouts via libbpf, JSON (de)serialisation, ISF and System.map import. Inputs are
// untrusted (a profile file may be corrupt, a BTF blob comes from guest memory): every parse is
// checked and fails with a reason.
#include "kernel/profile.hpp"

#include <bpf/btf.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace hvtrace::kernel {

using json = nlohmann::json;

std::string Profile::key() const {
  if (!build_id.empty()) return "build-" + build_id;
  std::uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a: stable across runs, unlike std::hash
  for (unsigned char c : banner) h = (h ^ c) * 0x100000001b3ULL;
  return fmt::format("banner-{:016x}", h);
}

bool Profile::lacks_wanted_fields() const {
  for (const FieldSpec& spec : wanted_fields())
    if (fields.count(spec.key) == 0 && sources.count("field " + spec.key) == 0) return true;
  return false;
}

std::optional<Field> Profile::field(const std::string& name) const {
  auto it = fields.find(name);
  if (it == fields.end()) return std::nullopt;
  return it->second;
}

const std::vector<std::string>& wanted_symbols() {
  static const std::vector<std::string> names = {
      "_text", "_end", "init_task", "init_top_pgt", "page_offset_base", "linux_banner", "current_task", "pcpu_hot",
      "__per_cpu_offset", "__start_BTF", "__stop_BTF", "__start_notes", "__stop_notes", "kallsyms_relative_base",
      "kallsyms_token_table", "entry_SYSCALL_64", "sys_call_table", "nr_cpu_ids", "__pgtable_l5_enabled"};
  return names;
}

const std::vector<FieldSpec>& wanted_fields() {
  static const std::vector<FieldSpec> specs = {
      {"task_struct.tasks", "task_struct", {"tasks"}},
      {"task_struct.pid", "task_struct", {"pid"}},
      {"task_struct.tgid", "task_struct", {"tgid"}},
      {"task_struct.comm", "task_struct", {"comm"}},
      {"task_struct.mm", "task_struct", {"mm"}},
      {"task_struct.active_mm", "task_struct", {"active_mm"}},
      {"task_struct.real_parent", "task_struct", {"real_parent"}},
      {"task_struct.parent", "task_struct", {"parent"}},
      {"task_struct.group_leader", "task_struct", {"group_leader"}},
      {"task_struct.real_cred", "task_struct", {"real_cred"}},
      {"task_struct.cred", "task_struct", {"cred"}},
      {"task_struct.start_time", "task_struct", {"start_time"}},
      {"task_struct.start_boottime", "task_struct", {"start_boottime", "real_start_time"}, false},
      {"task_struct.__state", "task_struct", {"__state", "state"}},
      {"task_struct.exit_state", "task_struct", {"exit_state"}},
      {"task_struct.flags", "task_struct", {"flags"}},
      {"mm_struct.pgd", "mm_struct", {"pgd"}},
      {"cred.uid", "cred", {"uid"}},
      {"cred.gid", "cred", {"gid"}},
      {"cred.euid", "cred", {"euid"}},
      {"list_head.next", "list_head", {"next"}},
      {"pcpu_hot.current_task", "pcpu_hot", {"current_task"}, false},
      // The mm an exec is about to install (trace: following execs at begin_new_exec).
      {"linux_binprm.mm", "linux_binprm", {"mm"}, false},
      // Not used by the process list; kept for the tracing tools (command lines, threads, files).
      {"task_struct.thread_group", "task_struct", {"thread_group"}, false},
      {"task_struct.signal", "task_struct", {"signal"}, false},
      {"task_struct.files", "task_struct", {"files"}, false},
      {"mm_struct.arg_start", "mm_struct", {"arg_start"}, false},
      {"mm_struct.arg_end", "mm_struct", {"arg_end"}, false},
      {"mm_struct.env_start", "mm_struct", {"env_start"}, false},
      {"mm_struct.env_end", "mm_struct", {"env_end"}, false},
      {"mm_struct.exe_file", "mm_struct", {"exe_file"}, false},
      {"cred.egid", "cred", {"egid"}, false},
      // Open files (linux/files.hpp): task_struct.files -> fdtable -> file -> inode / socket -> sock.
      {"files_struct.fdt", "files_struct", {"fdt"}, false},
      {"fdtable.max_fds", "fdtable", {"max_fds"}, false},
      {"fdtable.fd", "fdtable", {"fd"}, false},
      {"file.f_inode", "file", {"f_inode"}, false},
      {"file.f_mode", "file", {"f_mode"}, false},
      {"file.private_data", "file", {"private_data"}, false},
      {"inode.i_mode", "inode", {"i_mode"}, false},
      {"inode.i_rdev", "inode", {"i_rdev"}, false},
      {"inode.i_ino", "inode", {"i_ino"}, false},
      {"socket.type", "socket", {"type"}, false},
      {"socket.sk", "socket", {"sk"}, false},
      {"sock.__sk_common", "sock", {"__sk_common"}, false},
      {"sock_common.skc_daddr", "sock_common", {"skc_daddr"}, false},
      {"sock_common.skc_rcv_saddr", "sock_common", {"skc_rcv_saddr"}, false},
      {"sock_common.skc_dport", "sock_common", {"skc_dport"}, false},
      {"sock_common.skc_num", "sock_common", {"skc_num"}, false},
      {"sock_common.skc_family", "sock_common", {"skc_family"}, false},
      {"sock_common.skc_state", "sock_common", {"skc_state"}, false},
      {"sock_common.skc_v6_daddr", "sock_common", {"skc_v6_daddr"}, false},
      {"sock_common.skc_v6_rcv_saddr", "sock_common", {"skc_v6_rcv_saddr"}, false},
      // The guest's own syscall table (syscall_meta.hpp).
      {"syscall_metadata.name", "syscall_metadata", {"name"}, false},
      {"syscall_metadata.syscall_nr", "syscall_metadata", {"syscall_nr"}, false},
      {"syscall_metadata.nb_args", "syscall_metadata", {"nb_args"}, false},
      {"syscall_metadata.types", "syscall_metadata", {"types"}, false},
      {"syscall_metadata.args", "syscall_metadata", {"args"}, false},
  };
  return specs;
}

namespace {

const btf_type* skip_mods(const btf* b, std::uint32_t& id) {
  for (int depth = 0; depth < 32; ++depth) {
    const btf_type* t = btf__type_by_id(b, id);
    if (t == nullptr) return nullptr;
    if (!btf_is_mod(t) && !btf_is_typedef(t)) return t;
    id = t->type;
  }
  return nullptr;
}

// Find a member by name in a struct/union, looking into unnamed struct/union members (the kernel
// wraps e.g. mm_struct's fields in an anonymous struct). Returns bit offset and type id.
std::optional<std::pair<std::uint64_t, std::uint32_t>> find_member(const btf* b, std::uint32_t type_id,
                                                                    const std::string& name, int depth) {
  if (depth > 8) return std::nullopt;
  const btf_type* t = skip_mods(b, type_id);
  if (t == nullptr || !btf_is_composite(t)) return std::nullopt;
  const btf_member* m = btf_members(t);
  const std::uint16_t n = btf_vlen(t);
  for (std::uint16_t i = 0; i < n; ++i) {
    const char* mname = btf__name_by_offset(b, m[i].name_off);
    const std::uint64_t bit = btf_member_bit_offset(t, i);
    if (mname != nullptr && name == mname) return std::make_pair(bit, m[i].type);
    if (mname == nullptr || *mname == '\0') {
      if (auto inner = find_member(b, m[i].type, name, depth + 1)) return std::make_pair(bit + inner->first, inner->second);
    }
  }
  return std::nullopt;
}

}  // namespace

Result<void> add_fields_from_btf(Profile& profile, std::span<const std::byte> blob, const std::string& origin) {
  if (blob.size() < 24 || blob.size() > (256U << 20)) return make_error("BTF blob of {} bytes is implausible", blob.size());
  errno = 0;
  btf* b = btf__new(blob.data(), static_cast<std::uint32_t>(blob.size()));
  if (b == nullptr)  // libbpf >= 1.0 returns NULL and sets errno
    return make_error("libbpf rejected the BTF blob ({} bytes): {}", blob.size(), std::strerror(errno != 0 ? errno : EINVAL));
  std::string missing;
  for (const FieldSpec& spec : wanted_fields()) {
    const std::int32_t sid = btf__find_by_name_kind(b, spec.type.c_str(), BTF_KIND_STRUCT);
    if (sid <= 0) {
      if (spec.required) missing += " struct " + spec.type;
      else profile.sources["field " + spec.key] = fmt::format("absent: BTF has no struct {} ({})", spec.type, origin);
      continue;
    }
    if (const btf_type* st = btf__type_by_id(b, static_cast<std::uint32_t>(sid)))
      profile.sizes[spec.type] = st->size;
    bool found = false;
    for (const std::string& member : spec.members) {
      auto m = find_member(b, static_cast<std::uint32_t>(sid), member, 0);
      if (!m) continue;
      const long long size = btf__resolve_size(b, m->second);
      profile.fields[spec.key] = Field{m->first / 8, size > 0 ? static_cast<std::uint64_t>(size) : 0};
      profile.sources["field " + spec.key] =
          fmt::format("BTF: struct {} member {} at bit {} ({})", spec.type, member, m->first, origin);
      found = true;
      break;
    }
    if (!found && spec.required) missing += " " + spec.key;
    if (!found && !spec.required)
      profile.sources["field " + spec.key] = fmt::format("absent: struct {} has no member {} ({})", spec.type,
                                                         fmt::join(spec.members, "/"), origin);
  }
  btf__free(b);
  if (!missing.empty()) return make_error("BTF lacks what hvtrace needs:{}", missing);
  return {};
}

namespace {

json syscalls_to_json(const GuestSyscalls& s) {
  json j;
  j["meta"] = json::array();
  for (const SyscallMeta& m : s.meta) j["meta"].push_back({{"name", m.name}, {"nr", m.nr}, {"types", m.types}, {"args", m.args}});
  j["x64_table"] = json::object();
  for (const auto& [nr, name] : s.x64_table) j["x64_table"][std::to_string(nr)] = name;
  j["ia32_names"] = s.ia32_names;
  j["source"] = s.source;
  j["rejected"] = s.rejected;
  j["problems"] = s.problems;
  return j;
}

// nullopt for anything malformed or beyond the bounds a guest read has: the caller rereads.
std::optional<GuestSyscalls> syscalls_from_json(const json& j, const std::string& origin) {
  using L = SyscallMetaLimits;
  try {
    GuestSyscalls s;
    const json& meta = j.at("meta");
    const json& table = j.at("x64_table");
    const json& ia32 = j.at("ia32_names");
    if (meta.size() > L::kMaxRecords || table.size() > L::kMaxTable || ia32.size() > L::kMaxIa32Names) return std::nullopt;
    for (const json& m : meta) {
      SyscallMeta r{m.at("name").get<std::string>(), m.at("nr").get<std::int32_t>(),
                    m.at("types").get<std::vector<std::string>>(), m.at("args").get<std::vector<std::string>>()};
      if (r.types.size() != r.args.size() || r.types.size() > L::kMaxArgs) return std::nullopt;
      s.meta.push_back(std::move(r));
    }
    for (const auto& [nr, name] : table.items()) {
      const unsigned long n = std::stoul(nr);
      if (n >= L::kMaxTable) return std::nullopt;
      s.x64_table[static_cast<std::uint32_t>(n)] = name.get<std::string>();
    }
    s.ia32_names = ia32.get<std::set<std::string>>();
    s.source = j.value("source", std::string()) + " [cached in " + origin + "]";
    s.rejected = j.value("rejected", std::size_t{0});
    s.problems = j.value("problems", std::vector<std::string>());
    return s;
  } catch (const std::exception&) {  // json type errors, stoul on a bad key
    return std::nullopt;
  }
}

}  // namespace

std::string profile_to_json(const Profile& p) {
  json j;
  j["hvtrace_profile"] = Profile::kFormatVersion;
  j["banner"] = p.banner;
  j["build_id"] = p.build_id;
  for (const auto& [n, s] : p.symbols) j["symbols"][n] = {{"value", s.value}, {"absolute", s.absolute}};
  for (const auto& [n, f] : p.fields) j["fields"][n] = {{"offset", f.offset}, {"size", f.size}};
  for (const auto& [n, s] : p.sizes) j["sizes"][n] = s;
  for (const auto& [n, s] : p.sources) j["sources"][n] = s;
  if (p.kallsyms_relative_base_off) j["kallsyms_relative_base_off"] = *p.kallsyms_relative_base_off;
  if (p.kallsyms_token_table_off) j["kallsyms_token_table_off"] = *p.kallsyms_token_table_off;
  if (p.syscalls) j["syscalls"] = syscalls_to_json(*p.syscalls);
  return j.dump(1);
}

namespace {

Result<Profile> parse_hvtrace_json(const json& j, const std::string& origin) {
  if (j.value("hvtrace_profile", 0) != Profile::kFormatVersion)
    return make_error("{}: unsupported hvtrace profile version", origin);
  Profile p;
  p.banner = j.at("banner").get<std::string>();
  p.build_id = j.at("build_id").get<std::string>();
  for (const auto& [n, s] : j.at("symbols").items())
    p.symbols[n] = ProfileSymbol{s.at("value").get<std::uint64_t>(), s.at("absolute").get<bool>()};
  for (const auto& [n, f] : j.at("fields").items())
    p.fields[n] = Field{f.at("offset").get<std::uint64_t>(), f.at("size").get<std::uint64_t>()};
  if (j.contains("sizes"))
    for (const auto& [n, s] : j.at("sizes").items()) p.sizes[n] = s.get<std::uint64_t>();
  if (j.contains("sources"))
    for (const auto& [n, s] : j.at("sources").items()) p.sources[n] = s.get<std::string>() + " [cached in " + origin + "]";
  if (j.contains("kallsyms_relative_base_off")) p.kallsyms_relative_base_off = j["kallsyms_relative_base_off"].get<std::uint64_t>();
  if (j.contains("kallsyms_token_table_off")) p.kallsyms_token_table_off = j["kallsyms_token_table_off"].get<std::uint64_t>();
  if (j.contains("syscalls")) p.syscalls = syscalls_from_json(j["syscalls"], origin);
  return p;
}

// Symbols below the kernel's half are per-CPU offsets or absolute values: KASLR does not move them.
constexpr std::uint64_t kKernelHalf = 0xffff800000000000ULL;

void add_unslid_symbol(Profile& p, const std::string& name, std::uint64_t addr, std::uint64_t text,
                       const std::string& origin) {
  p.symbols[name] = addr >= kKernelHalf ? ProfileSymbol{addr - text, false} : ProfileSymbol{addr, true};
  p.sources["symbol " + name] = origin;
}

// Volatility 3 ISF (dwarf2json): symbols with link-time addresses, user_types with field offsets;
// anonymous members appear as fields named "unnamed_field_*" whose type is another user type.
std::optional<Field> isf_find_field(const json& types, const std::string& type, const std::string& member, int depth) {
  if (depth > 8 || !types.contains(type)) return std::nullopt;
  const json& fields = types[type].value("fields", json::object());
  if (fields.contains(member)) {
    const json& f = fields[member];
    return Field{f.value("offset", std::uint64_t{0}), 0};
  }
  for (const auto& [n, f] : fields.items()) {
    if (n.rfind("unnamed_field", 0) != 0) continue;
    const json& ft = f.value("type", json::object());
    if (!ft.contains("name")) continue;
    if (auto inner = isf_find_field(types, ft["name"].get<std::string>(), member, depth + 1))
      return Field{f.value("offset", std::uint64_t{0}) + inner->offset, 0};
  }
  return std::nullopt;
}

Result<Profile> parse_isf(const json& j, const std::string& origin) {
  Profile p;
  const json& syms = j.at("symbols");
  if (!syms.contains("_text")) return make_error("{}: ISF has no _text symbol", origin);
  const std::uint64_t text = syms["_text"].at("address").get<std::uint64_t>();
  for (const std::string& n : wanted_symbols())
    if (syms.contains(n) && syms[n].contains("address"))
      add_unslid_symbol(p, n, syms[n]["address"].get<std::uint64_t>(), text, "ISF " + origin);
  const json& types = j.at("user_types");
  std::string missing;
  for (const FieldSpec& spec : wanted_fields()) {
    if (types.contains(spec.type)) p.sizes[spec.type] = types[spec.type].value("size", std::uint64_t{0});
    bool found = false;
    for (const std::string& m : spec.members) {
      if (auto f = isf_find_field(types, spec.type, m, 0)) {
        p.fields[spec.key] = *f;
        p.sources["field " + spec.key] = fmt::format("ISF {}: {}.{}", origin, spec.type, m);
        found = true;
        break;
      }
    }
    if (!found && spec.required) missing += " " + spec.key;
  }
  if (p.fields.count("task_struct.comm") != 0) p.fields["task_struct.comm"].size = 16;
  if (!missing.empty()) return make_error("{}: ISF lacks{}", origin, missing);
  return p;
}

Result<Profile> parse_system_map(std::string_view text, const std::string& origin) {
  std::map<std::string, std::uint64_t> found;
  std::istringstream in{std::string(text)};
  std::string line;
  std::size_t lines = 0;
  while (std::getline(in, line)) {
    ++lines;
    std::istringstream ls(line);
    std::string addr, type, name;
    if (!(ls >> addr >> type >> name) || type.size() != 1) return make_error("{}:{}: not a System.map line", origin, lines);
    char* end = nullptr;
    const std::uint64_t v = std::strtoull(addr.c_str(), &end, 16);
    if (end == addr.c_str() || *end != '\0') return make_error("{}:{}: bad address '{}'", origin, lines, addr);
    found.emplace(name, v);
  }
  if (!found.count("_text")) return make_error("{}: System.map has no _text", origin);
  Profile p;
  for (const std::string& n : wanted_symbols())
    if (auto it = found.find(n); it != found.end()) add_unslid_symbol(p, n, it->second, found["_text"], "System.map " + origin);
  return p;
}

}  // namespace

Result<Profile> parse_profile(std::string_view text, const std::string& origin) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first != std::string_view::npos && text[first] == '{') {
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return make_error("{}: not valid JSON", origin);
    try {
      if (j.contains("hvtrace_profile")) return parse_hvtrace_json(j, origin);
      if (j.contains("user_types") && j.contains("symbols")) return parse_isf(j, origin);
    } catch (const json::exception& e) {
      return make_error("{}: malformed profile: {}", origin, e.what());
    }
    return make_error("{}: JSON is neither an hvtrace profile nor a Volatility 3 ISF", origin);
  }
  return parse_system_map(text, origin);
}

Result<Profile> load_profile_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return make_error("cannot open profile {}", path.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  return parse_profile(ss.str(), path.string());
}

namespace {
Result<void> write_profile_text(const std::string& text, const std::filesystem::path& path) {
  std::error_code ec;
  std::filesystem::create_directories(path.parent_path(), ec);
  const auto tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return make_error("cannot write profile {}", tmp);
    f << text;
    if (!f) return make_error("writing profile {} failed", tmp);
  }
  std::filesystem::rename(tmp, path, ec);  // atomic: readers never see half a profile
  if (ec) return make_error("installing profile {}: {}", path.string(), ec.message());
  return {};
}
}  // namespace

Result<void> save_profile_file(const Profile& p, const std::filesystem::path& path) {
  return write_profile_text(profile_to_json(p), path);
}

Result<void> store_syscalls_in_profile_file(const Profile& p, const GuestSyscalls& s, const std::filesystem::path& path) {
  // Edit the JSON rather than re-serialise `p`: a loaded profile's sources carry "[cached in ...]".
  std::ifstream in(path, std::ios::binary);
  json j = in ? json::parse(in, nullptr, /*allow_exceptions=*/false) : json();
  in.close();
  const bool same_kernel = j.is_object() && j.value("hvtrace_profile", 0) == Profile::kFormatVersion &&
                           j.value("build_id", std::string()) == p.build_id && j.value("banner", std::string()) == p.banner;
  if (!same_kernel) {
    Profile with = p;
    with.syscalls = s;
    return save_profile_file(with, path);
  }
  j["syscalls"] = syscalls_to_json(s);
  return write_profile_text(j.dump(1), path);
}

std::filesystem::path default_profile_dir() {
  if (const char* d = std::getenv("HVTRACE_PROFILE_DIR"); d != nullptr && *d != '\0') return d;
  if (const char* c = std::getenv("HVTRACE_CACHE"); c != nullptr && *c != '\0') return std::filesystem::path(c) / "profiles";
  return "/var/cache/hvtrace/profiles";
}

}  // namespace hvtrace::kernel
