// A kernel profile: what hvtrace needs to know about one kernel build to read its state — a few
// symbols and the layout of the structures it walks — plus where each item came from. It is made
// by discovery (kallsyms + BTF read from guest memory), cached as JSON keyed by the build
// (GNU build id, else a hash of linux_banner) and reused on the next attach; it can also come
// from a Volatility 3 ISF JSON or a System.map (symbols only; layouts then come from BTF).
// Symbol values are stored without the KASLR slide: relative to _text, or absolute for per-CPU
// symbols, which KASLR does not move.
#pragma once

#include "common/result.hpp"
#include "kernel/syscall_meta.hpp"

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace hvtrace::kernel {

struct ProfileSymbol {
  std::uint64_t value = 0;
  bool absolute = false;  // per-CPU offset or absolute symbol; otherwise value is relative to _text
};

struct Field {
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
};

struct Profile {
  static constexpr int kFormatVersion = 1;
  std::string banner;       // linux_banner, trailing newline stripped
  std::string build_id;     // hex, empty if the kernel has none in memory
  std::map<std::string, ProfileSymbol> symbols;
  std::map<std::string, Field> fields;            // "task_struct.pid" -> offset/size
  std::map<std::string, std::uint64_t> sizes;     // "task_struct" -> sizeof
  std::map<std::string, std::string> sources;     // "symbol init_task" / "field task_struct.pid" -> origin
  // Positions of kallsyms tables relative to _text (physical and virtual offsets agree in the
  // image): lets a warm attach re-find the slide and re-decode symbols without a RAM scan.
  std::optional<std::uint64_t> kallsyms_relative_base_off, kallsyms_token_table_off;
  // The guest's syscall table (syscall_meta.hpp), added after the first read; absent in profiles
  // that predate it or whose copy does not parse, which are then reread from memory.
  std::optional<GuestSyscalls> syscalls;

  [[nodiscard]] std::string key() const;  // "build-<id>" or "banner-<fnv64>"
  [[nodiscard]] std::optional<Field> field(const std::string& name) const;
  // True when a field hvtrace now wants was neither found nor recorded as absent: the profile
  // predates that field (a cache written by an older hvtrace) and its layouts are reread from BTF.
  [[nodiscard]] bool lacks_wanted_fields() const;
};

// The symbols and fields discovery keeps in a profile and the Linux model uses.
[[nodiscard]] const std::vector<std::string>& wanted_symbols();
struct FieldSpec {
  std::string key;                    // "task_struct.__state"
  std::string type;                   // "task_struct"
  std::vector<std::string> members;   // alternatives, first found wins: {"__state", "state"}
  bool required = true;
};
[[nodiscard]] const std::vector<FieldSpec>& wanted_fields();

// Layouts from a BTF blob (the kernel's .BTF section), parsed with libbpf. `origin` is recorded
// in profile.sources for each field.
[[nodiscard]] Result<void> add_fields_from_btf(Profile& profile, std::span<const std::byte> btf,
                                               const std::string& origin);

[[nodiscard]] std::string profile_to_json(const Profile& p);
// Accepts hvtrace's own profile JSON, a Volatility 3 ISF JSON, or a System.map (by content).
[[nodiscard]] Result<Profile> parse_profile(std::string_view text, const std::string& origin);
[[nodiscard]] Result<Profile> load_profile_file(const std::filesystem::path& path);
[[nodiscard]] Result<void> save_profile_file(const Profile& p, const std::filesystem::path& path);
// Put `s` into the hvtrace profile at `path`, leaving the rest of the file as it is; a missing
// file, or one of another kernel, is replaced by `p` with `s`.
[[nodiscard]] Result<void> store_syscalls_in_profile_file(const Profile& p, const GuestSyscalls& s,
                                                          const std::filesystem::path& path);
// $HVTRACE_PROFILE_DIR, else $HVTRACE_CACHE/profiles, else /var/cache/hvtrace/profiles.
[[nodiscard]] std::filesystem::path default_profile_dir();

}  // namespace hvtrace::kernel
