// Placeholder: generic decoding only (named decoders follow).
#include "syscalls/syscalls.hpp"

namespace hvtrace::syscalls {

Formatted format_call(const Call& call, const FormatOptions&) {
  Formatted f;
  const SyscallInfo* info = Table::get(call.abi).by_nr(call.nr);
  f.name = info ? std::string(info->name) : fmt::format("syscall_{:#x}", call.nr);
  const unsigned n = info ? info->nargs : 6U;
  for (unsigned i = 0; i < n && i < 6; ++i) f.args.push_back(fmt::format("{:#x}", call.args[i]));
  f.ret = format_return(call);
  f.failed = call.ret && *call.ret < 0 && *call.ret >= -4095;
  return f;
}

std::string format_args(const Call& call, const FormatOptions& opts) {
  const Formatted f = format_call(call, opts);
  return fmt::format("({})", fmt::join(f.args, ", "));
}

std::string format_return(const Call& call) {
  if (!call.ret) return "?";
  return fmt::format("{}", *call.ret);
}

std::string to_text(const Formatted& f, std::size_t start_col) {
  std::string s = fmt::format("{}({}) ", f.name, fmt::join(f.args, ", "));
  if (start_col + s.size() < 40) s.append(40 - start_col - s.size(), ' ');
  return s + "= " + f.ret;
}

}  // namespace hvtrace::syscalls
