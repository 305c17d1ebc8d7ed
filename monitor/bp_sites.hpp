// Which addresses translated code has breakpoint callbacks at, and when a change of the breakpoint
// table needs a code-cache flush (pure, unit-tested; plugin.cpp keeps the list in Monitor::bp_site).
//
// A flush makes QEMU retranslate every hot block of the guest (measured: each one ~13,500
// retranslations during the session benchmark, about as many as the whole watched session
// otherwise needs), so it is paid only when an address in force has no callback yet. The list is a
// superset of the table: a removed breakpoint's callback stays until the next flush and finds
// nothing (on_breakpoint checks the table in force), and an address added again (the same library
// function in the next connection's process, forked from the same listener) already has one.
// Bounded: when the new addresses do not fit, the list is rebuilt from the table (and flushed).
#pragma once

#include <cstdint>

namespace hvtrace::monitor {

// sites[0..n): the list (capacity cap); want[0..n_want): the addresses in force (n_want <= cap).
// Updates the list and returns true when the code cache must be flushed.
inline bool update_bp_sites(std::uint64_t* sites, std::uint32_t& n, std::uint32_t cap, const std::uint64_t* want,
                            std::uint32_t n_want) {
  const auto listed = [&](std::uint64_t va) {
    for (std::uint32_t i = 0; i < n; ++i)
      if (sites[i] == va) return true;
    return false;
  };
  std::uint32_t missing = 0;
  for (std::uint32_t i = 0; i < n_want; ++i) missing += listed(want[i]) ? 0u : 1u;
  if (missing == 0) return false;
  if (n + missing <= cap) {
    for (std::uint32_t i = 0; i < n_want; ++i)
      if (!listed(want[i])) sites[n++] = want[i];
    return true;
  }
  n = 0;   // rebuilt: only what is in force
  for (std::uint32_t i = 0; i < n_want && n < cap; ++i)
    if (!listed(want[i])) sites[n++] = want[i];
  return true;
}

}  // namespace hvtrace::monitor
